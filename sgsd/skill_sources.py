"""Skill sources beside the SGSD bank: Skill-SD's trajectory summaries and SDAR's skill files.

Both hand a retrieval strategy (:mod:`sgsd.skill_strategies`) the candidate :class:`Skill`
records of a problem (``skills_for(problem)``); the strategy picks the teacher's skills and
a teacher context (:mod:`sgsd.teacher_contexts`) renders them.

**Skill files (SDAR).** :func:`load_skill_files` reads either

* a folder: every ``*.md`` / ``*.txt`` file directly in it, in file-name order, is one skill;
  its name is the file stem, its text the file's content; an optional first line
  ``keywords: heat, microwave`` gives its keywords (and is not part of the text); or
* a JSON file: a list of ``{"name": str, "text": str, "keywords": [str, ...]}`` (keywords
  optional).

A skill without keywords is a *general* skill (SDAR's ``general_skills.md``: shown whatever
the task); see :class:`sgsd.skill_strategies.KeywordStrategy`.

**Trajectory summaries (Skill-SD).** An auxiliary writer (any :class:`sgsd.llm.LLMClient`,
the bank updater's writers) turns one finished rollout into one JSON summary
``{"success_analysis", "mistake_analysis", "golden_workflow"}`` (Skill-SD's project page,
"What a Skill Looks Like"; a multi-turn agent episode, ``record.episode``, is asked for the
same fields in agent wording, ``docs/agent-prompts.md``). :class:`SummaryStore` keeps at
most ``max_per_task`` of them per problem (oldest dropped first), saves atomically and
resumes from its file;
:class:`TrajectorySummarizer` writes them on a background thread, off the training step's
critical path: ``submit`` returns at once, ``collect``/``drain`` hand back what finished.
A failed request or an unusable reply (not JSON, a key missing, too long) is counted by
kind and skipped, never raised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sgsd import bounded_json
from sgsd.atomic import atomic_write_json
from sgsd.checks import check_int
from sgsd.llm.base import GenerationSettings, LLMClient
from sgsd.parsing import extract_json_object
from sgsd.plain_text import plain_text
from sgsd.records import RolloutRecord, episode_outcome

__all__ = [
    "SUMMARY_FIELDS",
    "Skill",
    "SkillFileError",
    "SummaryParse",
    "SummaryStore",
    "TrajectorySummarizer",
    "TrajectorySummary",
    "load_skill_files",
    "parse_summary",
    "summary_prompt",
    "task_key",
]

logger = logging.getLogger(__name__)

SUMMARY_FIELDS = ("success_analysis", "mistake_analysis", "golden_workflow")
_LABELS = {"success_analysis": "Success analysis", "mistake_analysis": "Mistake analysis",
           "golden_workflow": "Golden workflow"}
#: Longest kept text per summary field (cut at a word boundary): a runaway reply must not
#: bloat every teacher prompt it is retrieved into (the page's example fields are < 300).
SUMMARY_FIELD_MAX_CHARS = 1000
_KEYWORDS_LINE = re.compile(r"^\s*keywords\s*:(.*)$", re.IGNORECASE)
_SKILL_SUFFIXES = (".md", ".txt")


# ----------------------------------------------------------------------------- skills
@dataclass(frozen=True)
class Skill:
    """One retrievable skill: a unique ``name``, its ``text`` and optional ``keywords``."""

    name: str
    text: str
    keywords: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"a skill needs a non-empty name, got {self.name!r}")
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"skill {self.name!r} has no text")


class SkillFileError(ValueError):
    """A skill file or folder cannot be used; the message names the file and why."""


def load_skill_files(path: str | os.PathLike[str]) -> tuple[Skill, ...]:
    """The skills of a folder of ``.md``/``.txt`` files or of a JSON list (module docstring)."""
    p = Path(path)
    if not p.exists():
        raise SkillFileError(f"{p}: skill path not found")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in _SKILL_SUFFIXES)
        if not files:
            raise SkillFileError(f"{p}: no .md or .txt skill files in this folder")
        skills = [_skill_from_text_file(f) for f in files]
    elif p.suffix.lower() == ".json":
        skills = _skills_from_json(p)
    else:
        raise SkillFileError(f"{p}: expected a folder of .md/.txt skill files or a .json list of skills")
    seen: dict[str, str] = {}
    for skill in skills:
        if skill.name in seen:
            raise SkillFileError(f"{skill.source}: skill name {skill.name!r} is also used by {seen[skill.name]}")
        seen[skill.name] = skill.source
    return tuple(skills)


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > bounded_json.MAX_FILE_BYTES:
            raise SkillFileError(f"{path}: larger than the {bounded_json.MAX_FILE_BYTES:,} bytes a skill file may hold")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SkillFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SkillFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _skill_from_text_file(path: Path) -> Skill:
    text = _read_text(path)
    first, _, rest = text.partition("\n")
    keywords: tuple[str, ...] = ()
    match = _KEYWORDS_LINE.match(first)
    if match:
        keywords = _clean_keywords(match.group(1).split(","), path)
        text = rest
    if not text.strip():
        raise SkillFileError(f"{path}: the skill file has no text")
    return Skill(path.stem, text.strip(), keywords, str(path))


def _clean_keywords(raw: Iterable[Any], where: Any) -> tuple[str, ...]:
    out = []
    for kw in raw:
        if not isinstance(kw, str):
            raise SkillFileError(f"{where}: a keyword must be a string, got {type(kw).__name__}")
        kw = " ".join(kw.split()).lower()
        if kw and kw not in out:
            out.append(kw)
    return tuple(out)


def _skills_from_json(path: Path) -> list[Skill]:
    try:
        data = bounded_json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise SkillFileError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list) or not data:
        raise SkillFileError(f"{path}: expected a non-empty JSON list of skills, got {type(data).__name__}")
    skills = []
    for i, entry in enumerate(data):
        where = f"{path} entry {i}"
        if not isinstance(entry, dict):
            raise SkillFileError(f"{where}: expected an object with 'name' and 'text', got {type(entry).__name__}")
        unknown = sorted(set(entry) - {"name", "text", "keywords"})
        if unknown:
            raise SkillFileError(f"{where}: unknown key(s) {unknown}; a skill has 'name', 'text', 'keywords'")
        name, text, keywords = entry.get("name"), entry.get("text"), entry.get("keywords", [])
        if not isinstance(name, str) or not name.strip():
            raise SkillFileError(f"{where}: 'name' must be a non-empty string, got {name!r}")
        if not isinstance(text, str) or not text.strip():
            raise SkillFileError(f"{where} ({name!r}): 'text' must be a non-empty string")
        if not isinstance(keywords, list):
            raise SkillFileError(f"{where} ({name!r}): 'keywords' must be a list of strings")
        skills.append(Skill(name.strip(), text.strip(), _clean_keywords(keywords, where), f"{path}#{i}"))
    return skills


# ----------------------------------------------------------------------------- summaries
def task_key(problem: str) -> str:
    """The key a problem's summaries are kept under (whitespace-insensitive)."""
    return hashlib.sha256(" ".join(problem.split()).encode("utf-8")).hexdigest()[:16]


def _source_digest(problem: str, response: str) -> str:
    return hashlib.sha256((" ".join(problem.split()) + "\x00" + response).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class TrajectorySummary:
    """Skill-SD's per-trajectory skill; ``name`` (``sum_<digest>``) identifies its rollout."""

    name: str
    task: str
    success_analysis: str
    mistake_analysis: str
    golden_workflow: str
    success: bool
    step: int | None = None

    @property
    def text(self) -> str:
        """The three fields as labelled lines (empty ones left out): the teacher's skill text."""
        return "\n".join(f"{_LABELS[k]}: {getattr(self, k)}" for k in SUMMARY_FIELDS if getattr(self, k))

    def as_skill(self) -> Skill:
        return Skill(self.name, self.text, (), f"summary of task {self.task}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit // 2] + "\n...\n" + text[-(limit - limit // 2):]


def summary_prompt(record: RolloutRecord, max_completion_chars: int = 6000) -> str:
    """The writer's request for one rollout (concatenation only: LaTeX braces stay inert).

    The writer sees the verifier's verdict, not the reference answer, and is asked not to
    state the answer: the summary is skill guidance, not answer guidance (that is OPSD).
    An episode (``record.episode``) gets the agent wording (:func:`_episode_summary_prompt`);
    the three fields, and so :func:`parse_summary`, are the same.
    """
    if record.episode:
        return _episode_summary_prompt(record, max_completion_chars)
    outcome = ("SUCCESS: the final answer was verified correct." if record.success
               else "FAILURE: the final answer was wrong or missing.")
    return (
        "You are summarising one attempt of a student model at a math problem into a short skill note. "
        "The note will be shown to a later attempt at the same problem.\n\n"
        "### Problem\n" + plain_text(record.problem.strip()) + "\n\n"
        "### Outcome\n" + outcome + "\n\n"
        "### The attempt\n" + plain_text(_cut(record.response, max_completion_chars)) + "\n\n"
        "### Your task\n"
        "Reply with ONE JSON object with exactly these string fields:\n"
        '- "success_analysis": what in the attempt worked and should be reused\n'
        '- "mistake_analysis": what went wrong or was risky, and why\n'
        '- "golden_workflow": the numbered steps an ideal next attempt should follow\n'
        "Do not state the final answer itself. Output only the JSON object."
    )


def _episode_summary_prompt(record: RolloutRecord, max_completion_chars: int) -> str:
    """:func:`summary_prompt` for one multi-turn agent episode: the task message, the verdict
    and the transcript (cut like an attempt). Not listing the full move sequence is the
    episode's analogue of not stating the answer: the note teaches how, not which moves."""
    return (
        "You are summarising one episode of a student agent at a multi-turn task into a short skill note. "
        "The note will be shown to a later episode at the same task.\n\n"
        "### Task\n" + plain_text(record.problem.strip()) + "\n\n"
        "### Outcome\n" + episode_outcome(record) + "\n\n"
        "### The episode\n" + plain_text(_cut(record.response, max_completion_chars)) + "\n\n"
        "### Your task\n"
        "Reply with ONE JSON object with exactly these string fields:\n"
        '- "success_analysis": what in the episode worked and should be reused\n'
        '- "mistake_analysis": what went wrong or was risky (invalid actions, loops, dead ends such as a box '
        'pushed into a corner), and why\n'
        '- "golden_workflow": the numbered steps a next episode at the same task should follow\n'
        "Do not list the full move sequence. Output only the JSON object."
    )


@dataclass(frozen=True)
class SummaryParse:
    """The fields of one reply, or ``error`` (one of :data:`PARSE_ERRORS`) when unusable."""

    fields: dict[str, str] | None
    error: str | None = None


#: Why a reply was skipped (the counter keys of :attr:`TrajectorySummarizer.failures`).
PARSE_ERRORS = ("no_reply", "too_long", "not_json", "missing_keys", "not_strings", "empty")


def _clean(value: str) -> str:
    text = plain_text(" ".join(value.split()))
    if len(text) > SUMMARY_FIELD_MAX_CHARS:
        text = (text[:SUMMARY_FIELD_MAX_CHARS].rsplit(" ", 1)[0] or text[:SUMMARY_FIELD_MAX_CHARS]) + "..."
    return text


def parse_summary(text: str | None) -> SummaryParse:
    """The summary in a writer's reply (thinking dropped, LaTeX repaired: :mod:`sgsd.parsing`).

    The last complete JSON object carrying any of the three keys is used; it must carry all
    three as strings, not all empty. Never raises.
    """
    if text is None:
        return SummaryParse(None, "no_reply")
    if bounded_json.too_deep(text):
        return SummaryParse(None, "too_long")
    obj = None
    for key in SUMMARY_FIELDS:
        obj = extract_json_object(text, key)
        if obj is not None:
            break
    if obj is None:
        return SummaryParse(None, "not_json")
    if any(k not in obj for k in SUMMARY_FIELDS):
        return SummaryParse(None, "missing_keys")
    if any(not isinstance(obj[k], str) for k in SUMMARY_FIELDS):
        return SummaryParse(None, "not_strings")
    fields = {k: _clean(obj[k]) for k in SUMMARY_FIELDS}
    if not any(fields.values()):
        return SummaryParse(None, "empty")
    return SummaryParse(fields)


_FORMAT = "sgsd-trajectory-summaries"


class SummaryStore:
    """At most ``max_per_task`` summaries per problem, newest last; thread-safe.

    With a ``path``, an existing file is loaded (a resumed run keeps its summaries) and
    :meth:`save` writes it atomically. A file kept with a larger bound is cut to this one
    (its newest summaries kept).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, max_per_task: int = 8) -> None:
        check_int("max_per_task", max_per_task, 1)
        self.path = Path(path) if path is not None else None
        self.max_per_task = max_per_task
        self._tasks: dict[str, deque[TrajectorySummary]] = {}
        self._problems: dict[str, str] = {}
        self._names: set[str] = set()
        self._lock = threading.RLock()
        self.added = 0
        self.evicted = 0
        if self.path is not None and self.path.exists():
            self._load(self.path)

    # ------------------------------------------------------------------ reading
    def summaries(self, problem: str) -> tuple[TrajectorySummary, ...]:
        with self._lock:
            return tuple(self._tasks.get(task_key(problem), ()))

    def skills_for(self, problem: str) -> tuple[Skill, ...]:
        """The problem's summaries as skills, oldest first (the candidates a strategy picks from)."""
        return tuple(s.as_skill() for s in self.summaries(problem))

    def contains(self, problem: str, response: str) -> bool:
        """Is this rollout already summarised?"""
        with self._lock:
            return "sum_" + _source_digest(problem, response) in self._names

    def __len__(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._tasks.values())

    @property
    def num_tasks(self) -> int:
        with self._lock:
            return len(self._tasks)

    # ------------------------------------------------------------------ writing
    def add(self, summary: TrajectorySummary, problem: str) -> bool:
        """Keep ``summary`` (False: a summary of that rollout is already kept)."""
        with self._lock:
            if summary.name in self._names:
                return False
            queue = self._tasks.setdefault(summary.task, deque())
            self._problems.setdefault(summary.task, problem)
            queue.append(summary)
            self._names.add(summary.name)
            self.added += 1
            while len(queue) > self.max_per_task:
                self._names.discard(queue.popleft().name)
                self.evicted += 1
            return True

    def replace_with(self, other: SummaryStore) -> None:
        """Hold exactly ``other``'s summaries (a checkpoint's), cut to this store's bound, and save."""
        with self._lock, other._lock:
            self._tasks = {t: deque(list(q)[-self.max_per_task:]) for t, q in other._tasks.items()}
            self._problems = dict(other._problems)
            self._names = {s.name for q in self._tasks.values() for s in q}
        self.save()

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"format": _FORMAT, "version": 1, "max_per_task": self.max_per_task,
                    "tasks": [{"task": task, "problem": self._problems[task],
                               "summaries": [s.to_dict() for s in queue]} for task, queue in self._tasks.items()]}

    def save(self) -> Path | None:
        """Write the store atomically to its path (none: nothing written)."""
        if self.path is None:
            return None
        return atomic_write_json(self.path, self.to_dict(), indent=None)

    def _load(self, path: Path) -> None:
        try:
            data = bounded_json.loads(_read_text(path))
        except json.JSONDecodeError as exc:
            raise SkillFileError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("tasks"), list):
            raise SkillFileError(f"{path}: not a trajectory-summary store (expected an object with "
                                 f"\"format\": \"{_FORMAT}\" and a \"tasks\" list)")
        for i, entry in enumerate(data["tasks"]):
            try:
                problem = entry["problem"]
                for raw in entry["summaries"]:
                    fields = {k: raw[k] for k in ("name", "task", *SUMMARY_FIELDS, "success", "step")}
                    if not all(isinstance(fields[k], str) for k in ("name", "task", *SUMMARY_FIELDS)):
                        raise TypeError("a text field is not a string")
                    if not isinstance(fields["success"], bool):
                        raise TypeError("'success' is not true/false")
                    self.add(TrajectorySummary(**fields), problem)
            except (KeyError, TypeError) as exc:
                raise SkillFileError(f"{path}: task entry {i} is malformed ({type(exc).__name__}: {exc})") from None
        self.added = 0  # counts describe this run's additions


# ----------------------------------------------------------------------------- background writer
@dataclass
class _Counts:
    submitted: int = 0
    dropped_full: int = 0
    duplicates: int = 0
    requests: int = 0
    written: int = 0
    failures: Counter = field(default_factory=Counter)


class TrajectorySummarizer:
    """Summarises rollouts on one background thread; the training step only calls ``submit``.

    ``submit`` never blocks: beyond ``max_pending`` waiting rollouts the newest are dropped
    (counted in ``dropped_full``). Each batch of up to ``batch_size`` rollouts is one
    ``client.generate`` call; the store is saved after every batch that added a summary.
    """

    def __init__(self, client: LLMClient, store: SummaryStore, *,
                 settings: GenerationSettings | None = None, batch_size: int = 16, max_pending: int = 1024,
                 max_completion_chars: int = 6000) -> None:
        check_int("batch_size", batch_size, 1)
        check_int("max_pending", max_pending, 1)
        self.client, self.store = client, store
        self.settings = settings or GenerationSettings(max_new_tokens=1024, temperature=0.6)
        self.batch_size, self.max_pending, self.max_completion_chars = batch_size, max_pending, max_completion_chars
        self.counts = _Counts()
        self._pending: deque[tuple[RolloutRecord, int | None]] = deque()
        self._pending_names: set[str] = set()
        self._in_flight = 0
        self._finished: list[TrajectorySummary] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sgsd-trajectory-summarizer", daemon=True)
        self._thread.start()

    @property
    def failures(self) -> Counter:
        """Skipped replies by kind (:data:`PARSE_ERRORS`, ``error_<Type>`` for a raising client)."""
        return self.counts.failures

    def submit(self, records: Iterable[RolloutRecord], step: int | None = None) -> int:
        """Queue finished rollouts; returns how many were accepted (not duplicates, room left)."""
        accepted = 0
        with self._cond:
            if self._closed:
                raise RuntimeError("the summarizer is closed")
            for record in records:
                if not record.problem:
                    continue
                self.counts.submitted += 1
                name = "sum_" + _source_digest(record.problem, record.response)
                if name in self._pending_names or self.store.contains(record.problem, record.response):
                    self.counts.duplicates += 1
                elif len(self._pending) >= self.max_pending:
                    self.counts.dropped_full += 1
                else:
                    self._pending.append((record, step if step is not None else record.step))
                    self._pending_names.add(name)
                    accepted += 1
            self._cond.notify_all()
        return accepted

    def collect(self) -> list[TrajectorySummary]:
        """Summaries finished since the last ``collect``/``drain``, without waiting."""
        with self._cond:
            out, self._finished = self._finished, []
        return out

    def drain(self, timeout: float | None = None) -> list[TrajectorySummary]:
        """Wait until every submitted rollout is done (or ``timeout`` s), then ``collect``."""
        with self._cond:
            self._cond.wait_for(lambda: not self._pending and not self._in_flight, timeout=timeout)
        return self.collect()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending) + self._in_flight

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued work, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def __enter__(self) -> TrajectorySummarizer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return  # closed and nothing left
                batch = [self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))]
                self._in_flight = len(batch)
            try:
                done = self._summarise(batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must not kill the thread silently
                logger.exception("trajectory summarizer batch failed")
                done = []
                with self._cond:
                    self.counts.failures[f"error_{type(exc).__name__}"] += len(batch)
            with self._cond:
                for record, _ in batch:
                    self._pending_names.discard("sum_" + _source_digest(record.problem, record.response))
                self._finished.extend(done)
                self._in_flight = 0
                self._cond.notify_all()

    def _summarise(self, batch: list[tuple[RolloutRecord, int | None]]) -> list[TrajectorySummary]:
        prompts = [summary_prompt(record, self.max_completion_chars) for record, _ in batch]
        try:
            replies = self.client.generate(prompts, self.settings)
        except Exception as exc:  # noqa: BLE001 - clients should not raise; one that does costs this batch
            with self._cond:
                self.counts.requests += len(prompts)
                self.counts.failures[f"error_{type(exc).__name__}"] += len(prompts)
            return []
        done = []
        for (record, step), reply in zip(batch, replies):
            parsed = parse_summary(reply.text)
            if parsed.fields is None:
                with self._cond:
                    self.counts.failures[parsed.error] += 1
                continue
            summary = TrajectorySummary(name="sum_" + _source_digest(record.problem, record.response),
                                        task=task_key(record.problem), success=record.success, step=step,
                                        **parsed.fields)
            if self.store.add(summary, record.problem):
                done.append(summary)
        with self._cond:
            self.counts.requests += len(prompts)
            self.counts.written += len(done)
        if done:
            self.store.save()
        return done
