"""Crash-safe file writes.

Every file SGSD writes that must survive a crash (the skill bank, its snapshots,
resumable progress) goes through :func:`atomic_write_text`: the content is fully
serialised first, written to a temporary file in the *same* folder, flushed and
fsync'ed, then renamed over the target. ``os.replace`` is atomic on POSIX within a
filesystem, so a reader (or a crash) sees either the old file or the new one, never a
truncated mix. If anything fails before the rename, the temporary file is removed and
the previous file is untouched.

The new file gets the replaced file's permissions, or for a new file those the umask gives
(``mkstemp`` alone made every bank 0600, unreadable to the other users of a shared
cluster). A process killed mid-write leaves its temporary file behind: the next save of
the same target removes it (its name carries the writer's pid; a file of a pid that is no
longer running, or older than an hour, is stale).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over
    ``path``, on any exception (KeyboardInterrupt included) delete it. For writers that
    need a file name (pyarrow, torch.save)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, _mode_for(target))
    finally:
        os.close(fd)
    try:
        yield Path(tmp_name)
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same folder + rename)."""
    data = text.encode(encoding)  # encode before touching the disk: an encode error writes nothing
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Serialise ``obj`` as JSON (UTF-8, non-ASCII kept) and write it atomically."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


_STALE_AGE_S = 3600.0
_umask_lock = threading.Lock()


def _mode_for(target: Path) -> int:
    """The replaced file's permission bits, else 0666 minus the process umask."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        pass
    with _umask_lock:  # os.umask can only be read by setting it
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _remove_stale(target: Path) -> None:
    """Delete temporary files of earlier writes of ``target`` whose writer is gone."""
    prefix = f".{target.name}."
    try:
        names = [n for n in os.listdir(target.parent) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    now = time.time()
    for name in names:
        pid_text = name[len(prefix):].split(".", 1)[0]
        path = target.parent / name
        try:
            old = now - path.stat().st_mtime > _STALE_AGE_S
        except OSError:
            continue
        if not old and pid_text.isdigit() and _alive(int(pid_text)):
            continue  # a live writer's file (or our own write in progress)
        try:
            path.unlink()
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform/filesystem allows it.
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
