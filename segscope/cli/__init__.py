"""The ``segscope`` command line: one module per command, loaded when it runs.

Every command turns a :class:`~segscope.errors.SegscopeError` into one line on stderr and
exit status 2; Ctrl-C exits with 130 without a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

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
    "demo": ("segscope.cli.demo", "demo", "The whole study on built-in synthetic data."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported only when used (keeps ``--help`` fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (mod, _, _) in COMMANDS.items() if _module_exists(mod)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _module_exists(COMMANDS[name][0]):
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

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


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    try:
        cli.main(args=argv, prog_name="segscope", standalone_mode=False)
    except SegscopeError as exc:
        click.echo(f"segscope: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("segscope: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("segscope: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:
        # Disk full, permission denied, ...: the user's environment, not a bug.
        click.echo(f"segscope: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                   err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
