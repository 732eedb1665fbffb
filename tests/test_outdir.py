"""The output-folder rule: new/empty folders are claimed, a user's files are never touched."""

from __future__ import annotations

import pytest

from segscope.errors import SegscopeError
from segscope.outdir import MARKER, check_output, claim_output, read_marker


def test_new_folder_is_claimed_and_marked(tmp_path):
    out = claim_output(tmp_path / "run", "train", settings={"n": 3})
    assert read_marker(out)["command"] == "train"
    assert read_marker(out)["settings"] == {"n": 3}


def test_users_folder_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "a_pred.png").write_bytes(b"mine")
    for kwargs in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(SegscopeError, match="not empty and was not made by"):
            claim_output(tmp_path, "predict", **kwargs)
    assert (tmp_path / "a_pred.png").read_bytes() == b"mine"
    assert not (tmp_path / MARKER).exists()


def test_earlier_run_needs_resume_or_overwrite(tmp_path):
    out = claim_output(tmp_path / "run", "synth")
    (out / "old.png").write_bytes(b"old")
    with pytest.raises(SegscopeError, match="--resume to continue it, --overwrite"):
        claim_output(out, "synth")
    assert claim_output(out, "synth", resume=True) == out
    assert (out / "old.png").exists()
    claim_output(out, "synth", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def test_another_commands_folder_is_refused(tmp_path):
    out = claim_output(tmp_path / "run", "study")
    (out / "report.html").write_text("<html></html>")
    with pytest.raises(SegscopeError, match="output of 'segscope study'"):
        claim_output(out, "train", overwrite=True)
    assert (out / "report.html").exists()


def test_resume_of_nothing_and_bad_paths(tmp_path):
    with pytest.raises(SegscopeError, match="no earlier run"):
        claim_output(tmp_path / "new", "train", resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SegscopeError, match="not a folder"):
        claim_output(tmp_path / "file", "train")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(SegscopeError, match="broken symbolic link"):
        claim_output(tmp_path / "dangling", "train")
    with pytest.raises(SegscopeError, match="exclude each other"):
        claim_output(tmp_path / "x", "train", resume=True, overwrite=True)


def test_a_folder_in_use_by_another_process_is_refused(tmp_path):
    """Two processes never write into one folder: a --resume started while the run
    goes on stops at once."""
    import os
    import signal

    pytest.importorskip("fcntl")
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    out = tmp_path / "run"
    ready, go = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the other process: claims the folder, then waits
        try:
            claim_output(out, "train")
            os.write(go, b"1")
            signal.pause()
        finally:
            os._exit(0)
    try:
        assert os.read(ready, 1) == b"1"
        with pytest.raises(SegscopeError, match="another process is writing into"):
            claim_output(out, "train", resume=True)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert claim_output(out, "train", resume=True) == out  # the lock went with the process


def test_a_folder_with_only_a_mark_is_empty_for_any_command(tmp_path):
    # a run that stopped before writing anything (a bad input found after the claim)
    out = claim_output(tmp_path / "run", "explain")
    assert claim_output(out, "predict") == out
    assert read_marker(out)["command"] == "predict"
    # once it holds a result it is that command's folder again
    (out / "a_pred.png").write_bytes(b"result")
    with pytest.raises(SegscopeError, match="output of 'segscope predict'"):
        claim_output(out, "explain")


def test_check_output_refuses_like_claim_output_and_changes_nothing(tmp_path):
    out = claim_output(tmp_path / "run", "synth")
    (out / "old.png").write_bytes(b"old")
    with pytest.raises(SegscopeError, match="earlier 'segscope synth' run"):
        check_output(out, "synth")
    assert check_output(out, "synth", overwrite=True) == out
    assert (out / "old.png").exists()  # only claim_output clears
    new = tmp_path / "new"
    assert check_output(new, "synth") == new and not new.exists()
