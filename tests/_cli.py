"""Running the ``segscope`` entry point inside the test process."""

from __future__ import annotations

import contextlib

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


def torchrun(args: list, processes: int = 2, timeout: float = 120,
             env: dict[str, str] | None = None) -> tuple[int, str]:
    """Exit status and stderr of ``torchrun --nproc_per_node=PROCESSES -m segscope ARGS`` on
    the CPU (one thread each). On a hang, torchrun and every process below it are killed
    (its workers lead sessions of their own, so killing torchrun's group is not enough)
    and the test fails, rather than waiting for ever."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile

    import pytest

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={processes}", "-m", "segscope", *(str(a) for a in args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with tempfile.TemporaryFile("w+") as err:  # a pipe would keep a killed run open
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in [*_descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"torchrun did not finish within {timeout:.0f} s")
        err.seek(0)
        return proc.returncode, err.read()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), deepest first."""
    from pathlib import Path

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return _descendants_of(pid, children)


def _descendants_of(pid: int, children: dict[int, list[int]]) -> list[int]:
    out: list[int] = []
    for child in children.get(pid, []):
        out += [*_descendants_of(child, children), child]
    return out
