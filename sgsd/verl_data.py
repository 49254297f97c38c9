"""Problems -> verl's RL parquet format (what ``data.train_files`` / ``data.val_files`` read).

One row per problem::

    data_source   str   the set's name ("math_train", "aime24", "dapo-math-17k", ...)
    prompt        [{"role": "user", "content": student_prompt(problem)}]   the ONE chat message
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": answer}
    extra_info    {"problem", "answer", "solution", "index", "split"}

``prompt`` holds the exact student prompt (:func:`sgsd.prompts.student_prompt`); the chat
template is applied later by verl with ``data.apply_chat_template_kwargs``.
``extra_info.problem`` is the plain statement SGSD's teacher pass rebuilds teacher prompts
from, so it must never carry a dataset's own instruction text (see :func:`strip_dapo_wrapper`).

Like the rest of the library this module imports neither verl, ray nor vllm; pyarrow and
``datasets`` are imported only by the functions that need them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sgsd.atomic import atomic_path
from sgsd.datasets import BENCHMARKS, TRAIN_SETS, Problem, ProblemFileError, shipped_file
from sgsd.prompts import ANSWER_INSTRUCTION, skill_student_prompt, student_prompt

__all__ = [
    "DAPO_HUB_ID",
    "DAPO_NAME",
    "SHIPPED_SETS",
    "TRAIN_SETS",
    "DatasetUnavailableError",
    "dapo_problems",
    "iter_dapo_hub_rows",
    "iter_parquet_rows",
    "problem_text",
    "shipped_set_path",
    "strip_dapo_wrapper",
    "to_verl_rows",
    "write_parquet",
]

SHIPPED_SETS = TRAIN_SETS + BENCHMARKS
DAPO_NAME = "dapo-math-17k"
DAPO_HUB_ID = "BytedTsinghua-SIA/DAPO-Math-17k"

# DAPO-Math-17k wraps every problem in its own answer-format instruction ("Answer: $Answer"
# on the last line). SGSD prompts ask for \boxed{} instead, so the wrapper must go: left in,
# the student and every teacher would see two contradicting format instructions.
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the "
    "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

# CJK ideographs: the paper trains on the English subset of DAPO-Math-17k.
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class DatasetUnavailableError(RuntimeError):
    """A remote data set cannot be fetched (no Hub access, missing ``datasets``)."""


def shipped_set_path(name: str) -> Path:
    """Path of a shipped problem set: ``math_train``/``gsm8k`` (train) or a benchmark."""
    if name not in SHIPPED_SETS:
        raise ValueError(f"unknown shipped set {name!r}; shipped: {', '.join(SHIPPED_SETS)}")
    return shipped_file(name, "train" if name in TRAIN_SETS else "benchmark")


def to_verl_rows(problems: Sequence[Problem], data_source: str, split: str,
                 student_guidance: Sequence[tuple[Sequence[Any], Sequence[Any]]] | None = None,
                 guidance_source: Mapping[str, Any] | None = None,
                 ) -> list[dict[str, Any]]:
    """verl RL rows for ``problems`` (layout in the module docstring).

    A training row without an answer is an error (the verifier has nothing to grade
    against); a test row may lack one and gets an empty ground truth.

    ``student_guidance``: per problem the (skills, mistakes) shown to the STUDENT
    (:func:`sgsd.prompts.skill_student_prompt`) — the GRPO+Skill / OPSD+Skill baselines;
    ``extra_info.problem`` stays the plain statement, so teachers and evaluation never see
    the student's guidance. See :func:`retrieve_student_guidance`. The ids of the pairs shown
    go in ``extra_info.skill_ids`` / ``mistake_ids`` (the OPSD+Skill teacher sees exactly
    those), and ``guidance_source`` (:func:`guidance_source`: bank, its sha256, encoder, K)
    in ``extra_info.skills_from`` as JSON, which the trainer checks at start.
    """
    if not data_source:
        raise ValueError("data_source must be a non-empty string")
    if student_guidance is not None and len(student_guidance) != len(problems):
        raise ValueError(f"{len(problems)} problems but {len(student_guidance)} student guidance entries")
    rows = []
    for i, p in enumerate(problems):
        if not isinstance(p.problem, str) or not p.problem.strip():
            raise ValueError(f"{data_source}: problem {i} has an empty statement")
        answer = p.answer.strip() if isinstance(p.answer, str) else ""
        if split == "train" and not answer:
            raise ValueError(f"{data_source}: problem {i} has no answer; training rows need one")
        solution = p.extra.get("solution")
        skills, mistakes = student_guidance[i] if student_guidance is not None else ((), ())
        rows.append({
            "data_source": data_source,
            "prompt": [{"role": "user", "content": student_prompt(p.problem) if student_guidance is None
                        else skill_student_prompt(p.problem, *student_guidance[i])}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": answer},
            "extra_info": {
                "problem": p.problem,
                "answer": answer,
                "solution": solution if isinstance(solution, str) else "",
                "index": i,
                "split": split,
                "skill_ids": [s.skill_id for s in skills],
                "mistake_ids": [m.mistake_id for m in mistakes],
                "skills_from": json.dumps(dict(guidance_source), sort_keys=True) if student_guidance is not None
                and guidance_source is not None else "",
            },
        })
    return rows


def guidance_source(bank_path: str | os.PathLike[str], encoder: str, top_k: int) -> dict[str, Any]:
    """Where a row's student pairs came from: bank file (and its sha256), encoder, K."""
    import hashlib

    return {"bank": str(bank_path), "bank_sha256": hashlib.sha256(Path(bank_path).read_bytes()).hexdigest(),
            "encoder": encoder, "top_k": int(top_k)}


def problem_text(extra_info: dict | None, raw_prompt) -> str:
    """The plain problem of a verl row (or of a rollout made from one): the inverse of
    :func:`to_verl_rows`. ``extra_info["problem"]`` as written there, else the last user message of the chat prompt with this
    project's student-prompt wrapper removed."""
    if isinstance(extra_info, dict) and isinstance(extra_info.get("problem"), str) and extra_info["problem"].strip():
        return extra_info["problem"]
    messages = list(raw_prompt) if raw_prompt is not None else []
    users = [m["content"] for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ValueError("rollout has neither extra_info.problem nor a user message to rebuild teacher prompts from")
    text = users[-1]
    if text.startswith("Problem: ") and text.endswith(ANSWER_INSTRUCTION):
        text = text[len("Problem: "):-len(ANSWER_INSTRUCTION)].strip()
    return text


def retrieve_student_guidance(problems: Sequence[Problem], retriever: Any) -> list[tuple[list, list]]:
    """The top-K skills and top-K mistakes of each problem (one batched retrieval), for
    ``to_verl_rows(..., student_guidance=...)``."""
    found = retriever.retrieve([p.problem for p in problems])
    return [([t.skill for t in r.teachers], [t.mistake for t in r.teachers]) for r in found]


def _schema():
    import pyarrow as pa

    # Explicit, so every file has the same column types whatever its first rows hold
    # (an all-empty `solution` column would otherwise be typed null).
    return pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([("problem", pa.string()), ("answer", pa.string()), ("solution", pa.string()),
                                  ("index", pa.int64()), ("split", pa.string()),
                                  ("skill_ids", pa.list_(pa.string())), ("mistake_ids", pa.list_(pa.string())),
                                  ("skills_from", pa.string())])),
    ])


def write_parquet(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], schema: Any = None) -> Path:
    """Write ``rows`` to ``path`` atomically, with :mod:`sgsd.atomic`'s semantics.

    The table is built (and type-checked) before the disk is touched, written to a
    temporary file in the same folder, fsync'ed and renamed over the target: a reader or
    a crash sees the previous file or the complete new one, never a partial parquet.
    ``schema`` (a pyarrow schema) defaults to the problem rows' (:func:`to_verl_rows`), or
    to the episode rows' (:func:`sgsd.envs.data.episode_schema`) when the rows carry an
    ``agent_name``; a file holds one kind.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError("no rows to write: a data file with no problems is a mistake")
    if schema is None:
        # pyarrow drops the columns a schema lacks without a word: pick the rows' own
        kinds = {"agent_name" in row for row in rows}
        if len(kinds) > 1:
            raise ValueError("rows mix episodes (with agent_name) and problems (without); a file holds one kind")
        if kinds == {True}:
            from sgsd.envs.data import episode_schema

            schema = episode_schema()
        else:
            schema = _schema()
    table = pa.Table.from_pylist(list(rows), schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))
    return Path(path)


# ----------------------------------------------------------------------------- DAPO-Math-17k
def strip_dapo_wrapper(text: str) -> str:
    """The plain problem inside a DAPO-Math-17k prompt (its instruction lines removed)."""
    text = text.strip()
    if text.startswith(DAPO_PREFIX.strip()):
        text = text[len(DAPO_PREFIX.strip()):]
    cut = text.rfind(DAPO_SUFFIX.strip())
    if cut >= 0:
        text = text[:cut]
    return text.strip()


def iter_parquet_rows(path: str | os.PathLike[str], batch_size: int = 8192) -> Iterator[dict[str, Any]]:
    """Rows of a parquet file, streamed (DAPO-Math-17k's file holds its problems many times over)."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise ProblemFileError(f"{p}: file not found")
    try:
        handle = pq.ParquetFile(p)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise ProblemFileError(f"{p}: not a readable parquet file ({exc})") from None
    for batch in handle.iter_batches(batch_size=batch_size):
        yield from batch.to_pylist()


def iter_dapo_hub_rows(hub_id: str = DAPO_HUB_ID) -> Iterator[dict[str, Any]]:
    """Rows of DAPO-Math-17k from the Hugging Face Hub, through the ``datasets`` library."""
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise DatasetUnavailableError(f"cannot load {hub_id}: the 'datasets' package is missing ({exc})") from None
    try:
        dataset = load_dataset(hub_id, split="train")
    except Exception as exc:  # offline, DNS, HTTP, auth: all mean "not from here"
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DatasetUnavailableError(
            f"cannot load {hub_id} from the Hugging Face Hub ({type(exc).__name__}: {reason}); on a machine "
            "without Hub access, copy its data/dapo-math-17k.parquet here and pass --input PATH"
        ) from None
    for batch in dataset.iter(batch_size=8192):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield dict(zip(columns, values))


def dapo_problems(rows: Iterable[Mapping[str, Any]], *, language: str = "en",
                  source: str = DAPO_HUB_ID) -> tuple[list[Problem], dict[str, int]]:
    """Plain, de-duplicated problems from DAPO-Math-17k rows.

    Reads the verl-style schema of ``BytedTsinghua-SIA/DAPO-Math-17k`` (problem in
    ``prompt[0].content`` inside DAPO's instruction, answer in ``reward_model.ground_truth``)
    and the string-``prompt`` variant of processed copies (answer in ``solution`` when
    ``reward_model`` is absent). ``language="en"`` keeps problems without CJK characters
    (the paper's English subset); ``"all"`` keeps everything. The first occurrence of a
    problem wins. Returns the problems and counts of what was read and dropped.
    """
    if language not in ("en", "all"):
        raise ValueError(f"language={language!r} is not one of en, all")
    seen: set[str] = set()
    problems = []
    counts = {"rows": 0, "duplicates": 0, "non_english": 0}
    for number, row in enumerate(rows, start=1):
        counts["rows"] += 1
        where = f"{source}: row {number}"
        prompt = row.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], Mapping):
            prompt = prompt[0].get("content")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ProblemFileError(f"{where}: field 'prompt[0].content' must be a non-empty string")
        reward = row.get("reward_model")
        answer = reward.get("ground_truth") if isinstance(reward, Mapping) else row.get("solution")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str) or not answer.strip():
            raise ProblemFileError(f"{where}: field 'reward_model.ground_truth' is missing or empty")
        problem = strip_dapo_wrapper(prompt)
        if not problem:
            raise ProblemFileError(f"{where}: field 'prompt[0].content' holds DAPO's instruction but no problem")
        if problem in seen:
            counts["duplicates"] += 1
            continue
        seen.add(problem)
        if language == "en" and _CJK.search(problem):
            counts["non_english"] += 1
            continue
        problems.append(Problem(problem, answer.strip()))
    if not problems:
        raise ProblemFileError(f"{source}: contains no problems (after de-duplication and the language filter)")
    return problems, counts
