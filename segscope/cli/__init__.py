"""The ``segscope`` command line: one module per command, loaded when it runs.

Every command turns a :class:`~segscope.errors.SegscopeError` into one line on stderr and
exit status 2; Ctrl-C exits with 130 without a traceback. The process keeps freed memory
for reuse (:func:`~segscope.allocator.keep_freed_memory`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from ..allocator import keep_freed_memory
from ..errors import SegscopeError

#: command name -> (module, attribute, one-line help shown by ``segscope --help``).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("segscope.cli.synth", "synth", "Write synthetic road scenes to disk."),
    "train": ("segscope.cli.train", "train", "Train SegNet (resumable; torchrun for DDP)."),
    "evaluate": ("segscope.cli.evaluate", "evaluate", "Score a checkpoint on a dataset."),
    "predict": ("segscope.cli.predict", "predict", "Colour-coded predictions and overlays."),
    "explain": ("segscope.cli.explain", "explain", "Explain a prediction (LRP, Grad-CAM, ...)."),
    "study": ("segscope.cli.study", "study", "Run the chapter-9 analyses and write a report."),
    "report": ("segscope.cli.report", "report", "Rebuild report.html from a study folder."),
    "faithfulness": ("segscope.cli.faithfulness", "faithfulness",
                     "Which explanation to trust: perturbation and sanity checks."),
    "demo": ("segscope.cli.demo", "demo", "The whole study on built-in synthetic data."),
    "ablate": ("segscope.cli.ablate", "ablate", "One model per synthetic-data factor setting."),
    "explore": ("segscope.cli.explore", "explore", "Explain decisions in a local web page."),
    "diagnose": ("segscope.cli.diagnose", "diagnose",
                 "Rank real images by likely failure, without labels; what shifted."),
}


class _Interrupted(Exception):
    """Ctrl-C inside a command, kept away from click's own handling."""


class LazyGroup(click.Group):
    """A group whose commands are imported only when used (keeps ``--help`` fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (mod, _, _) in COMMANDS.items() if _module_exists(mod)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _module_exists(COMMANDS[name][0]):
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        # click answers Ctrl-C by printing an empty line before Abort; pass it on
        # untouched so that main() prints its one line.
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="segscope")
def cli() -> None:
    """segscope: why a segmentation network trained on synthetic images fails on real ones."""


#: click >= 8.2 raises this for a group called with no arguments; older click prints help.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _terminate_as_interrupt() -> None:
    """SIGTERM (``kill``, ``timeout``, a scheduler) unwinds like Ctrl-C: a file being
    written is removed, not left as a ``.tmp`` beside the results, and a command that
    saves its progress on Ctrl-C (``train``) saves it. Only where nobody else handles it."""
    import signal
    import threading

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return  # torchrun stops its workers with SIGTERM: one blocked in a collective must die
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    keep_freed_memory()  # pass after pass of the same large maps: reuse, don't page-fault
    _terminate_as_interrupt()
    try:
        cli.main(args=argv, prog_name="segscope", standalone_mode=False)
    except SegscopeError as exc:
        if not (exc.all_ranks and os.environ.get("RANK", "0") != "0"):
            click.echo(f"segscope: error: {_one_line(exc)}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("segscope: interrupted", err=True)
        sys.exit(130)
    except (KeyboardInterrupt, _Interrupted):
        click.echo("segscope: interrupted", err=True)
        sys.exit(130)
    except _NO_ARGS_IS_HELP as exc:  # bare ``segscope``: the help, as --help shows it
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        sys.exit(0)
    except click.ClickException as exc:
        # A usage error (bad option value, missing argument) is bad input like any
        # other: one line, with where to look instead of click's three-line usage block.
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        message = " ".join(exc.format_message().split())
        click.echo(f"segscope: error: {message}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:
        # Disk full, permission denied, ...: the user's environment, not a bug.
        click.echo(f"segscope: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                   err=True)
        sys.exit(2)
    except (MemoryError, RuntimeError) as exc:
        # Too large an input for this machine is the environment too; any other
        # RuntimeError is a bug and keeps its traceback.
        if not _out_of_memory(exc):
            raise
        click.echo("segscope: error: out of memory "
                   f"({_first_line(exc) or 'the input is too large'}); use a smaller --size, "
                   "--batch-size or --width", err=True)
        sys.exit(2)


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else ""


def _one_line(exc: SegscopeError) -> str:
    """The message of ``exc``, also when a DataLoader worker raised it.

    torch re-raises a worker's exception with the worker's whole traceback as its
    message; the original one-line message is its last line, after the class name.
    """
    lines = str(exc).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught "):
        return lines[-1].split(f"{SegscopeError.__name__}: ", 1)[-1]
    return " ".join(line.strip() for line in lines)


if __name__ == "__main__":  # pragma: no cover
    main()
