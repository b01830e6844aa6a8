"""Files that are whole or absent: written under a temporary name, fsynced, renamed.

A rename replaces a name atomically, so a reader (or a restart after SIGKILL) sees the old
file or the new one, never half of one; the fsyncs of the file and of its folder make the
same hold after a power cut. Checkpoints and the model registry are written this way.
Temporary names carry the writer's pid, so leftovers of a killed writer can be told from
the files of a writer still at work (:func:`stale`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")  # .{name}.{pid}.tmp


def _temporary(path: Path) -> Path:
    """Where :func:`write_durably` writes ``path`` before the rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def temporary_writer(path: Path) -> int | None:
    """The pid that wrote temporary file ``path`` (None: not a temporary file's name)."""
    match = _TEMPORARY.match(path.name)
    return int(match.group(1)) if match else None


def fsync_dir(folder: Path) -> None:
    """Make the renames and creations in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, *chunks: bytes, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``chunks`` atomically (temporary file, fsync, rename, and the
    folder's fsync unless the caller renames the folder itself next)."""
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def stale(paths: Iterable[Path], pid_of: Callable[[Path], int | None]) -> list[Path]:
    """The ``paths`` whose writer (``pid_of(path)``, None if the name has none) is dead."""
    found = []
    for path in paths:
        pid = pid_of(path)
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            found.append(path)
    return found
