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


def torchrun(args: list, processes: int = 2, timeout: float = 120) -> tuple[int, str]:
    """Exit status and stderr of ``torchrun --nproc_per_node=PROCESSES -m segscope ARGS`` on
    the CPU (one thread each). It runs in a session of its own, so that a hang ends with
    all of torchrun's workers killed and the test failed, not waiting for ever."""
    import os
    import signal
    import subprocess
    import sys

    import pytest

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={processes}", "-m", "segscope", *(str(a) for a in args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout:.0f} s")
    return proc.returncode, stderr
