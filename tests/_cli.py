"""Running the ``segscope`` entry point inside the test process."""

from __future__ import annotations

from segscope.cli import main


def exit_code(args: list) -> int:
    """Exit status of ``segscope ARGS`` (0 when it returns normally)."""
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``segscope ARGS``."""
    code = exit_code(args)
    out = capsys.readouterr()
    return code, out.out, out.err
