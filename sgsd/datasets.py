"""The data shipped inside the package, and a loader for problem files.

``resolve(value, kind)`` is the one place a value that is "a path or a shipped name" (a
skill bank, a benchmark, a training set, an SDAR-style skill file) becomes a file, for the
CLI, the evaluation, the cold-start build, the data preparation and the trainer alike;
``shipped_path`` locates package data without relying on the current directory.
:func:`load_problems` reads any JSONL (or parquet) of ``problem``/``answer`` rows with
errors that name the file, the line and the field.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgsd import bounded_json

__all__ = [
    "ALIASES",
    "BENCHMARKS",
    "DATA_DIR",
    "SHIPPED",
    "SKILL_BANKS",
    "SKILL_FILES",
    "TRAIN_SETS",
    "Problem",
    "ProblemFileError",
    "bank_path",
    "benchmark_path",
    "load_problems",
    "resolve",
    "shipped_file",
    "shipped_path",
    "source_label",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
BENCHMARKS = ("aime24", "aime25", "hmmt25", "amc2023", "math500")
# empty: a bank that grows online from nothing; rulebook: the synthetic task's guidance (sgsd/rulebook.py)
SKILL_BANKS = ("qwen3_1.7b", "qwen3_4b", "empty", "rulebook")
TRAIN_SETS = ("math_train", "gsm8k")
#: static skill files for :func:`sgsd.skill_sources.load_skill_files` (SDAR's skill-file
#: teacher); written for this project, as SDAR ships none for math (sgsd/data/README.md)
SKILL_FILES = ("math", "sokoban", "rulebook")
#: kind -> (folder under DATA_DIR, shipped names, file suffix, what the error messages call it)
SHIPPED = {
    "bank": ("skill_banks", SKILL_BANKS, ".json", "skill bank"),
    "benchmark": ("benchmarks", BENCHMARKS, ".jsonl", "benchmark"),
    "train": ("train", TRAIN_SETS, ".jsonl", "training set"),
    "skills": ("skills", SKILL_FILES, ".json", "skill file"),
}
#: kinds whose loader also reads a folder: an existing folder of that name wins too
_FOLDER_KINDS = frozenset({"skills"})
ALIASES = {"amc23": "amc2023", "math-500": "math500"}  # the names papers use


class ProblemFileError(ValueError):
    """A problem file is missing or malformed; the message names the file, line and field."""


@dataclass(frozen=True)
class Problem:
    problem: str
    answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def shipped_path(*parts: str) -> Path:
    """Path of a shipped data file, e.g. ``shipped_path("skill_banks", "qwen3_1.7b.json")``."""
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"no shipped data file {'/'.join(parts)!r} under {DATA_DIR}")
    return path


def shipped_file(name: str, kind: str) -> Path:
    """The shipped file named ``name`` (or an :data:`ALIASES` name) of ``kind``: ``"bank"``,
    ``"benchmark"``, ``"train"`` or ``"skills"``; a ValueError lists the shipped names."""
    folder, names, suffix, what = SHIPPED[kind]
    name = ALIASES.get(name, name)
    if name not in names:
        raise ValueError(f"unknown shipped {what} {name!r}; shipped: {', '.join(names)}")
    return shipped_path(folder, name + suffix)


def resolve(value: str | os.PathLike[str], kind: str) -> Path:
    """A path or a shipped name of ``kind`` (see :func:`shipped_file`) as a path.

    An existing file wins over a shipped name (``./aime24`` is read if it is there), and
    for ``"skills"``, whose loader also reads a folder of skill files, an existing folder
    too (``./math/``); a value that is neither comes back as a path, for its loader to
    report missing.
    """
    path = Path(value).expanduser()
    name = ALIASES.get(str(value), str(value))
    exists = path.is_file() or (kind in _FOLDER_KINDS and path.is_dir())
    return shipped_file(name, kind) if not exists and name in SHIPPED[kind][1] else path


def source_label(path: Path) -> str:
    """How a run records the file it read: a shipped file by its name, another by its absolute path."""
    path = path.resolve()
    return path.stem if path.is_relative_to(DATA_DIR) else str(path)


def benchmark_path(name: str) -> Path:
    return shipped_file(name, "benchmark")


def bank_path(name: str) -> Path:
    return shipped_file(name, "bank")


def load_problems(path: str | os.PathLike[str], *, require_answer: bool = False) -> list[Problem]:
    """Read ``problem`` (+ optional ``answer``) rows from a ``.jsonl``/``.json`` or ``.parquet`` file.

    A ``question`` field is accepted in place of ``problem``. Answers that are numbers
    are converted to strings. Empty files are an error: a run over nothing is a mistake.
    """
    p = Path(path)
    if not p.exists():
        raise ProblemFileError(f"{p}: problem file not found")
    if p.is_dir():
        raise ProblemFileError(f"{p}: is a directory, expected a problem file")
    rows = _read_rows(p)
    problems = []
    for lineno, row in rows:
        where = f"{p}: line {lineno}"
        if not isinstance(row, dict):
            raise ProblemFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if "problem" not in row and "question" not in row and "prompt" in row:
            row = _from_verl_row(row, where)  # what scripts/prepare_data.py writes
        text = row.get("problem", row.get("question"))
        if not isinstance(text, str) or not text.strip():
            raise ProblemFileError(f"{where}: field 'problem' must be a non-empty string, got {text!r:.60}")
        answer = row.get("answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            if not math.isfinite(answer):  # a parquet NaN was graded against the string "nan"
                raise ProblemFileError(f"{where}: field 'answer' must be a finite number or a string, got {answer!r}")
            answer = str(answer)
        if answer is not None and not isinstance(answer, str):
            raise ProblemFileError(f"{where}: field 'answer' must be a string, got {type(answer).__name__}")
        if require_answer and not (answer and answer.strip()):
            raise ProblemFileError(f"{where}: field 'answer' is missing or empty")
        for name, value in (("problem", text), ("answer", answer)):
            bad = bounded_json.lone_surrogate(value or "")
            if bad:  # printing, tokenising or requesting it failed on every try
                raise ProblemFileError(f"{where}: field '{name}' holds a lone surrogate {bad}: not Unicode text")
        extra = {k: v for k, v in row.items() if k not in ("problem", "question", "answer")}
        problems.append(Problem(text, answer, extra))
    if not problems:
        raise ProblemFileError(f"{p}: contains no problems")
    return problems


def _from_verl_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """A verl row (``prompt`` chat, ``reward_model.ground_truth``, ``extra_info``) as a problem row."""
    from sgsd.verl_data import problem_text

    try:
        problem = problem_text(row.get("extra_info"), row.get("prompt"))
    except ValueError as exc:
        raise ProblemFileError(f"{where}: {exc}") from None
    reward = row.get("reward_model")
    answer = reward.get("ground_truth") if isinstance(reward, dict) else None
    return {"problem": problem, **({"answer": answer} if answer is not None else {}),
            "data_source": row.get("data_source")}


def _read_rows(p: Path) -> list[tuple[int, Any]]:
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return list(enumerate(pq.read_table(p).to_pylist(), start=1))
        except (pa.ArrowException, OSError) as exc:  # a 0-byte or corrupt file
            raise ProblemFileError(f"{p}: not a readable parquet file ({exc})") from None
    if p.stat().st_size > bounded_json.MAX_FILE_BYTES:
        raise ProblemFileError(f"{p}: {p.stat().st_size:,} bytes, more than the {bounded_json.MAX_FILE_BYTES:,} a "
                               "problem file may hold")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProblemFileError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if p.suffix == ".json":
        try:
            data = bounded_json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProblemFileError(f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        if not isinstance(data, list):
            raise ProblemFileError(f"{p}: a .json problem file must hold a list of objects")
        return list(enumerate(data, start=1))
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, bounded_json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ProblemFileError(f"{p}: line {lineno}: invalid JSON: {exc.msg}") from None
    return rows
