"""A resumable job's output folder: an identity file and append-only progress logs.

A long job (the cold-start bank build) saves each finished unit of work as one JSON line
in a log, appended once per batch and flushed + fsync'ed, so a crash or Ctrl-C loses at
most the batch in flight. A crash in the middle of a write leaves a torn last line: it
is cut off when the log is next read (a damaged line elsewhere is an error, not silently
skipped). Appending is not an atomic replace on purpose: rewriting a whole log per batch
would cost O(n^2) over a run.

The identity file (``run.json``) records everything that shapes the saved work. A rerun
whose identity differs is refused with every difference named, unless nothing has been
saved yet (then the folder simply takes the new identity); a non-empty folder without an
identity file is refused so that a job never writes into someone else's files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from sgsd import bounded_json
from sgsd.atomic import atomic_write_json

__all__ = ["RunDir", "RunDirError"]


class RunDirError(ValueError):
    """A damaged log, or a folder that belongs to another job or run."""


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class RunDir:
    """``path`` holds ``identity_name`` and any number of JSONL logs (``read_log``/``append_log``).

    Every log record is a JSON object with an integer ``index`` (the unit of work it finishes).
    """

    def __init__(self, path: str | os.PathLike[str], identity_name: str = "run.json", what: str = "run") -> None:
        self.path = Path(path)
        self.identity_path = self.path / identity_name
        self.what = what
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} exists and is not a directory")

    def read_log(self, name: str) -> list[dict[str, Any]]:
        """The log's complete records, in order; a torn last line is truncated away."""
        path = self.path / name
        if not path.exists():
            return []
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            os.truncate(path, end)
        rows = []
        for lineno, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), start=1):
            try:
                row = bounded_json.loads(line)
            except json.JSONDecodeError as exc:
                raise RunDirError(f"{path}: line {lineno}: invalid JSON ({exc.msg}); the log is damaged") from None
            if not isinstance(row, dict) or not isinstance(row.get("index"), int):
                raise RunDirError(f"{path}: line {lineno}: not a progress record (no integer 'index')")
            rows.append(row)
        return rows

    def append_log(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append records as JSON lines in one write, then flush and fsync."""
        if not rows:
            return
        text = "".join(json.dumps(dict(row), ensure_ascii=False) + "\n" for row in rows)
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / name, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    def check_identity(self, identity: Mapping[str, Any], *, has_records: bool,
                       informational: Collection[str] = ()) -> bool:
        """True when the saved identity equals ``identity`` (keys in ``informational`` aside).

        Raises :class:`RunDirError` for a non-empty folder without an identity file, and for
        a different identity when ``has_records`` (work saved under the old one). False
        means the identity must be (re)written with :meth:`save_identity`.
        """
        if not self.identity_path.exists():
            if self.path.exists() and any(self.path.iterdir()):
                raise RunDirError(f"{self.path} is not empty and holds no {self.what} ({self.identity_path.name} "
                                  "missing); choose a new or empty output directory")
            return False
        try:
            saved = json.loads(self.identity_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{self.identity_path}: unreadable ({exc})") from None
        old, new = _flatten(saved if isinstance(saved, dict) else {}), _flatten(identity)
        diffs = [f"{key} {old.get(key)!r} there, {new.get(key)!r} here" for key in sorted(set(old) | set(new))
                 if key not in informational and old.get(key) != new.get(key)]
        if diffs and has_records:
            raise RunDirError(f"{self.path} holds another {self.what} ({'; '.join(diffs)}); rerun with its "
                              "settings to continue it, or choose a new output directory")
        return not diffs

    def save_identity(self, identity: Mapping[str, Any]) -> None:
        atomic_write_json(self.identity_path, dict(identity))
