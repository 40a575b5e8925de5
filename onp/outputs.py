"""Where a command may write: the one check of ``--out`` that every command runs first.

ONP deletes or replaces only folders it wrote itself. Each output folder it makes carries a
marker file (:data:`MARKER`, JSON: the command and whether the run finished). The rules, checked
by :func:`claim_output` before any work starts:

- ``--out`` may not be the working directory or a folder above it, the filesystem root, the
  home folder or a folder above it, an input, a folder that holds an input, or a folder inside
  an input folder;
- an existing ``--out`` that is not empty is used only when it carries the marker: a finished
  run's folder is replaced with ``--overwrite true`` (never otherwise), an unfinished one is
  continued by commands that resume (``reuse``); a folder without the marker is never written
  into or deleted, whatever the flags;
- ``--out`` must be writable: a file is created and removed there (or in the nearest folder above
  it that exists) before anything else runs;
- hidden temporary folders a killed run left beside ``--out`` (they carry the marker) are
  removed.

Commands then write either all at once (:func:`atomic_output`: a hidden folder beside ``--out``
moved onto it on success) or step by step into the folder (:func:`incremental_output`, which
marks the folder finished at the end and removes what a failed fresh run wrote).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from onp.errors import ONPInputError

log = logging.getLogger(__name__)

MARKER = ".onp-output.json"
"""File in every folder ONP writes: ``{"command": ..., "finished": bool}``."""


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of ``folder``, or ``None`` when ONP did not write it (or it is unreadable)."""
    try:
        payload = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) and "command" in payload else None


def write_marker(folder: Path, command: str, finished: bool) -> None:
    """Mark ``folder`` as written by ``command`` (finished or not; an unfinished one by us)."""
    tmp = folder / f"{MARKER}.tmp"
    payload: dict[str, Any] = {"command": command, "finished": finished}
    if not finished:
        payload["pid"] = os.getpid()
    tmp.write_text(json.dumps(payload) + "\n")
    os.replace(tmp, folder / MARKER)


def _running(pid: object) -> bool:
    """Whether process ``pid`` is alive (another run still writing its hidden folder)."""
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _refuse_protected(out: Path, flag: str) -> None:
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if out == Path(out.anchor):
        raise ONPInputError(f"{flag} {out}: the filesystem root; choose a new folder for output")
    if _is_within(cwd, out):
        raise ONPInputError(f"{flag} {out}: the working directory or a folder above it; choose "
                            "a new folder for output")
    if _is_within(home, out):
        raise ONPInputError(f"{flag} {out}: the home folder or a folder above it; choose a new "
                            "folder for output")


def _refuse_inputs(out: Path, inputs: Iterable[str | Path | None], flag: str) -> None:
    for given in inputs:
        if not given:
            continue
        path = _resolved(given)
        if _is_within(path, out):
            raise ONPInputError(f"{flag} {out}: holds the input {given}; choose a folder that "
                                "holds no input")
        if path.is_dir() and _is_within(out, path):
            raise ONPInputError(f"{flag} {out}: lies inside the input folder {given}; choose a "
                                "folder outside it")


def _check_writable(out: Path, flag: str) -> None:
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ONPInputError(f"{flag} {out}: {existing} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".onp-write-check.", dir=existing)
        os.close(fd)
        os.unlink(name)
    except OSError as error:
        raise ONPInputError(f"{flag} {out}: cannot write there ({error.strerror or error}); "
                            "choose a writable folder") from None


def remove_stale_partials(out: Path) -> None:
    """Remove hidden ``.<name>.*`` folders beside ``out`` that a killed ONP run left."""
    if not out.parent.is_dir():
        return
    # mkdtemp's names: the prefix, then 8 characters from [a-z0-9_]
    pattern = re.compile(rf"\.{re.escape(out.name)}\.[a-z0-9_]{{8}}")
    for sibling in out.parent.iterdir():
        if not (pattern.fullmatch(sibling.name) and sibling.is_dir()):
            continue
        marker = read_marker(sibling)
        if marker is not None and not marker.get("finished") and not _running(marker.get("pid")):
            log.info("removing %s, left by an interrupted %s run", sibling, marker["command"])
            shutil.rmtree(sibling, ignore_errors=True)


def claim_output(
    out: str | Path, command: str, inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False, reuse: bool = False, flag: str = "--out",
) -> Path:
    """Check that ``command`` may write ``out`` (the rules in the module docstring).

    Args:
        out: The output folder.
        command: The command, e.g. ``"onp.apply"`` (kept in the marker).
        inputs: Every file or folder the run reads (``None`` entries are skipped).
        overwrite: Replace a finished ONP output folder.
        reuse: Continue in an ONP output folder this command wrote (resume, benchmark cells).
        flag: The option's name, for messages.

    Returns:
        ``out`` resolved.

    Raises:
        ONPInputError: Naming ``flag``, the folder and what to do instead.
    """
    path = check_destination(out, inputs, flag)
    if path.is_dir() and any(path.iterdir()):
        marker = read_marker(path)
        if marker is None:
            raise ONPInputError(f"{flag} {path}: not empty and not written by ONP (no {MARKER}); "
                                "ONP never writes into or deletes such a folder; choose a new "
                                "or empty folder")
        if not overwrite and not (reuse and marker["command"] == command):
            state = "a finished" if marker.get("finished") else "an unfinished"
            hint = ("pass --resume true to continue it or " if not marker.get("finished")
                    and command == "onp.train_agent" else "")
            raise ONPInputError(f"{flag} {path}: holds {state} {marker['command']} run; "
                                f"{hint}pass --overwrite true to replace it, or choose another "
                                "folder")
    remove_stale_partials(path)
    return path


def check_destination(
    out: str | Path, inputs: Iterable[str | Path | None] = (), flag: str = "--out"
) -> Path:
    """The checks of :func:`claim_output` that do not look inside ``out``.

    For a command that only adds files to a folder and never deletes anything (the
    benchmark's ``--collect-only``): not a protected folder, not an input, writable.

    Returns:
        ``out`` resolved.
    """
    path = _resolved(out)
    _refuse_protected(path, flag)
    _refuse_inputs(path, inputs, flag)
    if path.exists() and not path.is_dir():
        raise ONPInputError(f"{flag} {path}: a file, not a folder")
    _check_writable(path, flag)
    return path


def replace_folder(target: Path, source: Path) -> None:
    """Move ``source`` onto ``target``; an existing ``target`` must carry ONP's marker."""
    if target.exists():
        if any(target.iterdir()) and read_marker(target) is None:
            raise ONPInputError(f"{target}: not written by ONP; it is left as it is")
        shutil.rmtree(target)
    os.replace(source, target)


@contextmanager
def atomic_output(out: Path, command: str) -> Iterator[Path]:
    """Yield a hidden folder beside ``out``; it replaces ``out`` only when the block succeeds.

    A failure removes the hidden folder; a kill leaves it, marked unfinished, for
    :func:`remove_stale_partials` to remove on the next start.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_marker(tmp, command, finished=False)
        yield tmp
        write_marker(tmp, command, finished=True)
        tmp.chmod(0o755)  # mkdtemp makes it owner-only
        replace_folder(out, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def incremental_output(
    out: Path, command: str, overwrite: bool = False, resumable: str | None = None
) -> Iterator[Path]:
    """Write into ``out`` step by step; mark it finished when the block succeeds.

    With ``overwrite`` a previous ONP output in ``out`` is removed first (claim it with
    :func:`claim_output` before). When the block fails and this run made the folder (or
    replaced it), the folder is removed, unless it holds the entry ``resumable`` (e.g.
    ``checkpoints``): then it stays, marked unfinished, for the command to continue.
    """
    fresh = overwrite or not out.is_dir() or not any(out.iterdir())
    if overwrite and out.is_dir() and read_marker(out) is not None:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, command, finished=False)
    try:
        yield out
    except BaseException:
        if fresh and not (resumable and (out / resumable).exists()):
            shutil.rmtree(out, ignore_errors=True)
        raise
    write_marker(out, command, finished=True)
