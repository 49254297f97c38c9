"""Crash-safe file writes.

Every file SGSD writes that must survive a crash (the skill bank, its snapshots,
resumable progress) goes through :func:`atomic_write_text`: the content is fully
serialised first, written to a temporary file in the *same* folder, flushed and
fsync'ed, then renamed over the target. ``os.replace`` is atomic on POSIX within a
filesystem, so a reader (or a crash) sees either the old file or the new one, never a
truncated mix. If anything fails before the rename, the temporary file is removed and
the previous file is untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
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
