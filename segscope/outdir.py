"""The output-folder rule every writing command follows.

A command writes only into a folder that is new, empty, or marked as made by an earlier
run of the *same* command. The mark is a small JSON file, :data:`MARKER`, written first.

- new or empty folder (or one holding nothing but a mark: a run that stopped before it
  wrote anything): claimed, marked, used;
- a folder of an earlier run of the same command: refused, unless the user says
  ``--resume`` (continue it; the command keeps what is done) or ``--overwrite`` (its
  contents are removed first, so two runs' files never mix);
- any other non-empty folder (the user's own files, another command's run): always
  refused; ``--overwrite`` never deletes what segscope did not make.

Two runs' files therefore never share a folder, and nothing a user made is replaced
without being asked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._io import write_json
from .errors import SegscopeError

#: The file that marks a folder as the output of one segscope command.
MARKER = ".segscope-run.json"


def read_marker(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The mark of ``folder`` as a dict, or None when it has none (or an unreadable one)."""
    path = Path(folder) / MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def claim_output(
    path: str | os.PathLike,
    command: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    flag: str = "--out",
    settings: dict[str, Any] | None = None,
    can_resume: bool = True,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """Check, create and mark the output folder of one run of ``segscope COMMAND``.

    Parameters
    ----------
    path
        The folder the user named.
    command
        The command's name (``"train"``, ``"diagnose"``, ...), written into the mark.
    resume
        Continue an earlier run of the same command in this folder.
    overwrite
        Remove the contents of an earlier run of the same command before starting.
    flag
        The option's name, for messages.
    settings
        JSON-able settings recorded in the mark (what made this folder).
    can_resume
        Whether the command has a ``--resume``; only then do messages suggest it.
    inputs
        Files and folders the command reads: an output folder that holds one of them
        is refused (``--overwrite`` would delete it, writing could replace it).

    Returns
    -------
    Path
        The folder, existing, writable and marked.

    Raises
    ------
    SegscopeError
        When the folder may not be used; the message says why and what to do.
    """
    out, mark = _usable(path, command, resume=resume, overwrite=overwrite, flag=flag,
                        can_resume=can_resume, inputs=inputs)
    if overwrite and mark is not None:
        _clear(out)
        mark = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # a real write: root passes os.access
            pass
    except OSError as exc:
        raise SegscopeError(
            f"cannot write into {flag} folder {out}: {exc.strerror or exc}") from None
    _lock(out, flag)
    if not (resume and mark is not None):
        mark_output(out, command, settings)
    return out


def changed_settings(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings that differ between an earlier run's and this one's, each as its
    name with both values when they are short (``"rule: alpha1beta0 -> epsilon:1e-06"``),
    for a ``--resume`` refusal that says which option to give back."""
    out = []
    for k in sorted(before.keys() | now.keys()):
        old, new = before.get(k), now.get(k)
        if old == new:
            continue
        shown = (f"{old}", f"{new}")
        out.append(f"{k}: {shown[0]} -> {shown[1]}" if max(map(len, shown)) <= 40 else k)
    return out


def check_output(
    path: str | os.PathLike,
    command: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    flag: str = "--out",
    can_resume: bool = True,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """The refusals of :func:`claim_output`, without creating, clearing or marking
    anything: for a command that checks ``--out`` first, then its inputs, and claims the
    folder only once both are good (so that a bad input leaves no folder behind)."""
    return _usable(path, command, resume=resume, overwrite=overwrite, flag=flag,
                   can_resume=can_resume, inputs=inputs)[0]


def _usable(path, command, *, resume, overwrite, flag, can_resume, inputs):
    """(folder, its mark or None) when ``segscope COMMAND`` may write into ``path``."""
    if resume and overwrite:
        raise SegscopeError("--resume and --overwrite exclude each other")
    out = check_out_path(path, flag)
    _refuse_inputs_inside(out, inputs, flag)
    if out.is_dir():
        _lock(out, flag)
    entries = _entries(out) if out.is_dir() else []
    mark = read_marker(out) if entries else None
    # A folder that holds nothing but a mark (a run stopped before it wrote anything,
    # say on an input it could only check once the folder was claimed) is as good as
    # empty, for any command; the same command may still resume it.
    only_mark = entries == [MARKER] and mark is not None
    if entries and not (only_mark and not resume):
        again = ("add --resume to continue it, --overwrite to replace it"
                 if can_resume else "add --overwrite to replace it")
        if mark is None:
            raise SegscopeError(
                f"{flag} {out} is not empty and was not made by segscope {command}; "
                "choose a new or empty folder (nothing in it was touched)")
        if mark.get("command") != command:
            raise SegscopeError(
                f"{flag} {out} holds the output of 'segscope {mark.get('command')}', "
                f"not of 'segscope {command}'; choose another folder")
        if not overwrite and not resume:
            raise SegscopeError(
                f"{flag} {out} holds an earlier 'segscope {command}' run; {again}, "
                "or choose another folder")
    elif resume:
        raise SegscopeError(f"--resume: {flag} {out} holds no earlier run to continue")
    return out, mark


def mark_output(folder: str | os.PathLike, command: str,
                settings: dict[str, Any] | None = None) -> Path:
    """Write the mark saying that ``folder`` holds a run of ``segscope COMMAND``.

    :func:`claim_output` calls it; a command calls it itself only to adopt a folder it
    can prove is its own (e.g. a training run written before folders were marked).
    """
    return write_json(Path(folder) / MARKER, {
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings or {},
    })


def check_out_path(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a Path, refused when it cannot be an output folder (a file, a broken
    symbolic link); it need not exist yet."""
    out = Path(path).expanduser()
    if out.is_symlink() and not out.exists():
        raise SegscopeError(f"{flag} {out} is a broken symbolic link")
    if out.exists() and not out.is_dir():
        raise SegscopeError(f"{flag} {out} exists and is not a folder")
    return out


def _refuse_inputs_inside(out: Path, inputs: Iterable[str | os.PathLike], flag: str) -> None:
    root = out.resolve()
    for item in inputs:
        if item is None or not isinstance(item, str | os.PathLike):
            continue
        source = Path(item).expanduser()
        if not source.exists():
            continue
        where = source.resolve()
        if where == root or root in where.parents:
            raise SegscopeError(
                f"{flag} {out} holds the input {source}; write into another folder")


#: Folders this process writes into -> the open descriptor that holds their lock.
_LOCKS: dict[Path, int] = {}


def _lock(folder: Path, flag: str) -> None:
    """Hold an exclusive lock on ``folder`` for as long as this process lives (the
    kernel drops it at exit, also after SIGKILL), so that two processes never write into
    the same output folder at once (say, a ``--resume`` started while the run goes on)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Windows
        return
    key = folder.resolve()
    old = _LOCKS.pop(key, None)
    if old is not None:  # this process claims its folder again (a second command in-process)
        os.close(old)
    try:
        fd = os.open(key, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SegscopeError(f"another process is writing into {flag} {folder}; wait until it "
                            "ends or choose another folder") from None
    _LOCKS[key] = fd


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError as exc:
        raise SegscopeError(f"cannot read folder {folder}: {exc.strerror or exc}") from None


def _clear(folder: Path) -> None:
    """Remove everything in ``folder`` (a folder this command made), keeping the folder."""
    for name in _entries(folder):
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
