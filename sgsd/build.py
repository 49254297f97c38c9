"""Cold-start skill-bank construction (paper Alg. 2, App. C.2) and ``sgsd bank build``.

    sgsd bank build --model SPEC --data DATA -o DIR [-n 256] [--seed 0]

1. Sample ``num_problems`` problems of DATA (a shipped training set, ``math_train`` or
   ``gsm8k``, or a JSONL/parquet file of ``problem``/``answer`` rows) with ``seed``.
2. Generate ONE completion per problem from the Tab. 6 prompt (batched through any
   :class:`sgsd.llm.LLMClient`) and grade its last ``\\boxed{}`` against the reference
   (:func:`sgsd.verifier.grade`): reward 1 or 0.
3. Build a memory per problem (:func:`make_memory`): the online updater's record
   (problem, completion cut to its head and tail, reward, predicted and reference answer,
   feedback) plus ``trajectory_summary``. The paper leaves the summary open; here it is
   deterministic: the first three and last three non-empty lines of the reply (of its
   answer part when it thought first), each cut to 300 characters.
4. Successes -> Tab. 7 (general skills), failures -> Tab. 8 (common mistakes); at most
   ``skills_per_success`` / ``mistakes_per_failure`` (3, "up to three") items per memory.
5. Merge each collection hierarchically (Alg. 3, :func:`sgsd.merge.merge_bank`).

Files in DIR: ``run.json`` (the run's identity), ``generations.jsonl`` and
``extractions.jsonl`` (progress, appended), then, written atomically at the end,
``memories.jsonl``, ``raw_candidates.json`` (the shipped raw-candidate layout, input of
``sgsd bank merge``), ``bank.json`` (the shipped bank layout) and ``build.json`` (counts,
seconds, settings, model spec).

Resuming (the folder is a :class:`sgsd.run_dir.RunDir`). Every finished generation
(graded) and every finished extraction (parsed) is appended to its JSONL file once per
batch, flushed and fsync'ed, so a crash or Ctrl-C loses at most the batch in flight;
rerunning the same command skips what is saved. A torn last line (a crash mid-write) is
cut off on the next start. A request the client
gave up on is NOT saved - the rerun retries it - and is counted; an extraction reply
that cannot be parsed IS saved (with no items) and counted as a parse failure. Merging is
redone whenever generations or extractions were added, reusing every merge reply saved in
``merge_replies.jsonl`` (:class:`sgsd.merge.ReplyCache`: only failed and new requests are
asked); a merge that merged nothing leaves no ``bank.json``; a rerun of a finished build
does nothing. ``run.json`` holds everything that shapes the
saved records (data content hash, N, seed, model spec without its ``?options``,
generation and extraction settings, completion cut); a rerun that differs is refused,
naming each difference. Batch size, merge settings and per-memory limits may change.

Nothing here raises for a bad model reply. A build that yields no item at all writes
``memories.jsonl`` and ``build.json`` but no bank (an empty bank would fail to load as a
teacher source); :attr:`BuildResult.bank` is then ``None``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgsd.atomic import atomic_write_json, atomic_write_text
from sgsd.bank import CommonMistake, GeneralSkill, SkillBank
from sgsd.checks import raising
from sgsd.datasets import BENCHMARKS, TRAIN_SETS, Problem, load_problems, resolve, source_label
from sgsd.llm.base import Completion, GenerationSettings, LLMClient
from sgsd.merge import DEFAULT_MERGE_SETTINGS, MergeConfig, ReplyCache, merge_bank
from sgsd.parsing import parse_items
from sgsd.records import RolloutRecord, memory_record
from sgsd.run_dir import RunDir, RunDirError
from sgsd.skill_prompts import extraction_prompt, memory_generation_prompt

__all__ = [
    "DEFAULT_EXTRACTION_SETTINGS",
    "DEFAULT_GENERATION_SETTINGS",
    "FILES",
    "TRAIN_SETS",
    "BuildConfig",
    "BuildError",
    "BuildResult",
    "SeedSet",
    "build_bank",
    "load_seed_set",
    "make_memory",
    "resolve_model_spec",
]

FILES = {"run": "run.json", "generations": "generations.jsonl", "extractions": "extractions.jsonl",
         "memories": "memories.jsonl", "raw": "raw_candidates.json", "bank": "bank.json", "build": "build.json"}
#: A sample of the initial policy as it is evaluated (paper App. E.1: T=1.0, top-p 0.95), thinking off.
DEFAULT_GENERATION_SETTINGS = GenerationSettings(max_new_tokens=4096, temperature=1.0, top_p=0.95)
#: Extraction replies hold 1-3 short items; the online updater uses the same settings.
DEFAULT_EXTRACTION_SETTINGS = GenerationSettings(max_new_tokens=2048, temperature=0.6, top_p=0.95)
_KIND = {True: "general_skills", False: "common_mistakes"}
_USERINFO = re.compile(r"(://)[^/@\s]+@")


class BuildError(ValueError):
    """Bad input or a DIR that belongs to another run; the message names the problem."""


@dataclass(frozen=True)
class BuildConfig:
    num_problems: int = 256  # paper Tab. 12: 256 in-domain training problems
    seed: int = 0  # problem sample (and the clients' sampling seed)
    batch_size: int = 32  # prompts per generate() call and per saved batch
    skills_per_success: int = 3  # "up to three" (Alg. 2 line 10)
    mistakes_per_failure: int = 3  # Alg. 2 line 13
    group_size: int = 32  # Alg. 3's H
    patience: int = 3  # Alg. 3's P
    max_layers: int = 64
    max_completion_chars: int = 6000  # a memory's completion keeps its head and tail
    grade_timeout_s: float = 5.0
    generation: GenerationSettings = DEFAULT_GENERATION_SETTINGS
    extraction: GenerationSettings = DEFAULT_EXTRACTION_SETTINGS
    merge: GenerationSettings = DEFAULT_MERGE_SETTINGS

    def __post_init__(self) -> None:
        # The merge sizes are MergeConfig's to check, the sampling values GenerationSettings'.
        checks = [("num_problems", 1), ("batch_size", 1), ("skills_per_success", 0), ("mistakes_per_failure", 0),
                  ("max_completion_chars", 200)]
        for name, low in checks:
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise BuildError(f"{name} must be an integer >= {low}, got {value!r}")
        if not self.grade_timeout_s > 0:
            raise BuildError(f"grade_timeout_s must be > 0, got {self.grade_timeout_s!r}")
        with raising(BuildError):
            MergeConfig(self.group_size, self.patience, self.max_layers)

    def limit(self, kind: str) -> int:
        return self.skills_per_success if kind == "general_skills" else self.mistakes_per_failure


# --------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class SeedSet:
    """The sampled problems (Alg. 2's D_0): ``rows[i]`` is problem ``i``'s row in the data."""

    label: str  # a shipped name or the absolute path
    sha256: str
    rows: tuple[int, ...]
    problems: tuple[Problem, ...]


def load_seed_set(data: str, num_problems: int, seed: int) -> SeedSet:
    """Sample ``num_problems`` distinct problems (all with answers) of ``data`` with ``seed``."""
    path = resolve(data, "train")
    if not path.exists():
        if data in BENCHMARKS:
            raise BuildError(f"--data {data!r} is an evaluation benchmark; the cold-start seed set comes from "
                             f"training data: {', '.join(TRAIN_SETS)} or a JSONL/parquet path")
        raise BuildError(f"--data {data!r}: no such file, and not a shipped training set "
                         f"({', '.join(TRAIN_SETS)})")
    if path.is_dir():
        raise BuildError(f"--data {data!r} is a directory, expected a JSONL/parquet file")
    label = source_label(path)
    problems = load_problems(path, require_answer=True)
    if num_problems > len(problems):
        raise BuildError(f"num_problems {num_problems} exceeds the {len(problems)} problems in {label}")
    rows = tuple(random.Random(seed).sample(range(len(problems)), num_problems))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return SeedSet(label, digest, rows, tuple(problems[r] for r in rows))


def resolve_model_spec(model: str) -> str:
    """``--model``: a bare local directory means ``transformers:DIR``; otherwise a
    :func:`sgsd.llm.factory.make_client` spec, checked for syntax (nothing is loaded)."""
    from sgsd.llm.factory import parse_spec

    try:
        local = Path(model).is_dir()
    except OSError:  # e.g. a spec longer than a file name may be: not a directory
        local = False
    if local:
        return f"transformers:{Path(model).resolve()}"
    if ":" not in model:
        raise BuildError(f"--model {model!r}: not a local model directory and not a BACKEND:TARGET spec "
                         "(transformers:DIR, vllm:NAME, openai:URL#MODEL, scripted:TEXT)")
    try:
        parse_spec(model)
    except (ValueError, TypeError) as exc:
        raise BuildError(f"--model: {exc}") from None
    return model


def model_identity(spec: str) -> str:
    """The spec without ``?options`` (device, batch size...) and without URL credentials."""
    if not spec.startswith("scripted:"):
        spec = spec.partition("?")[0]
    return _USERINFO.sub(r"\1***@", spec)


# --------------------------------------------------------------------- memories
def make_memory(problem: Problem, completion: str, reward: float, max_chars: int) -> dict[str, Any]:
    """A memory record (Alg. 2 line 5), the same as the online updater's (:func:`sgsd.records.memory_record`)."""
    return memory_record(RolloutRecord(problem.problem, completion, reward, answer=problem.answer), max_chars)


# --------------------------------------------------------------------- identity
def _identity(seeds: SeedSet, spec: str, config: BuildConfig) -> dict[str, Any]:
    def shaping(s: GenerationSettings) -> dict[str, Any]:
        return {k: getattr(s, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k", "enable_thinking")}

    return {"data_label": seeds.label, "data_sha256": seeds.sha256, "num_problems": len(seeds.rows),
            "seed": config.seed, "model": model_identity(spec), "generation": shaping(config.generation),
            "extraction": shaping(config.extraction), "max_completion_chars": config.max_completion_chars}


# --------------------------------------------------------------------- the build
@dataclass
class BuildResult:
    """What a build wrote. ``bank`` is None when no item could be extracted."""

    out_dir: Path
    bank: SkillBank | None
    metadata: dict[str, Any]
    already_complete: bool = False

    @property
    def complete(self) -> bool:
        """No generation or extraction left to retry."""
        return bool(self.metadata.get("complete"))


@dataclass
class _Counts:
    generation_requests: int = 0
    extraction_requests: int = 0
    generation_failures: int = 0
    extraction_failures: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def _batches(todo: list[int], size: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=desc, unit="request", file=sys.stderr,
               disable=not progress or len(todo) <= size)
    try:
        for start in range(0, len(todo), size):
            yield todo[start:start + size]
            bar.update(min(size, len(todo) - start))
    finally:
        bar.close()


def _ask(client: LLMClient, prompts: list[str], settings: GenerationSettings) -> list[Completion]:
    replies = list(client.generate(prompts, settings))
    if len(replies) != len(prompts):  # never pair a reply with the wrong problem: all count as failed
        error = f"client returned {len(replies)} replies for {len(prompts)} prompts"
        return [Completion(None, error=error)] * len(prompts)
    return replies


def build_bank(out_dir: str | os.PathLike[str], data: str, model: str, client: LLMClient | None = None,
               config: BuildConfig = BuildConfig(), *, progress: bool = True) -> BuildResult:
    """Run (or continue) the cold-start build of ``data`` with ``model`` into ``out_dir``.

    ``model`` is a :func:`sgsd.llm.factory.make_client` spec or a local directory; the
    client is built from it unless ``client`` is given (then ``model`` only names it).
    Raises :class:`BuildError` for bad input, :class:`sgsd.datasets.ProblemFileError` for
    a bad data file; a KeyboardInterrupt keeps everything saved so far.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    spec = resolve_model_spec(model) if client is None else model
    seeds = load_seed_set(data, config.num_problems, config.seed)
    identity = _identity(seeds, spec, config)
    try:
        run = RunDir(out, FILES["run"], what="bank build")
        gen_rows = run.read_log(FILES["generations"])
        identity_saved = run.check_identity(identity, has_records=bool(gen_rows), informational=("data_label",))
        gens = _load_generations(out, gen_rows, seeds)
        exts = _load_extractions(out, run.read_log(FILES["extractions"]), gens)
    except RunDirError as exc:
        raise BuildError(str(exc)) from None
    if identity_saved and len(gens) == len(seeds.rows) and set(exts) == set(gens) and (out / FILES["build"]).exists():
        meta = json.loads((out / FILES["build"]).read_text(encoding="utf-8"))
        has_bank = (out / FILES["bank"]).exists()
        if meta.get("complete") and has_bank == ("bank" in meta.get("counts", {})):  # nothing left to do
            return BuildResult(out, SkillBank.load(out / FILES["bank"]) if has_bank else None, meta,
                               already_complete=True)

    if client is None:
        from sgsd.llm.factory import make_client

        try:
            client = make_client(spec)
        except (ImportError, ValueError, TypeError, OSError) as exc:
            raise BuildError(f"cannot create the LLM client {model_identity(spec)!r}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    if not identity_saved:
        run.save_identity(identity)
    counts = _Counts()

    tick = time.perf_counter()
    _generate(run, client, seeds, gens, config, counts, progress)
    counts.seconds["generation"] = time.perf_counter() - tick
    memories = {i: make_memory(seeds.problems[i], g["completion"], g["reward"], config.max_completion_chars)
                for i, g in sorted(gens.items())}
    atomic_write_text(out / FILES["memories"], "".join(
        json.dumps({"index": i, "row": seeds.rows[i], **m}, ensure_ascii=False) + "\n" for i, m in memories.items()))
    tick = time.perf_counter()
    _extract(run, client, memories, exts, config, counts, progress)
    counts.seconds["extraction"] = time.perf_counter() - tick
    return _finish(out, client, seeds, spec, gens, exts, config, counts, progress, started, ReplyCache(run))


def _load_generations(out: Path, rows: list[dict[str, Any]], seeds: SeedSet) -> dict[int, dict[str, Any]]:
    gens: dict[int, dict[str, Any]] = {}
    for row in rows:
        i = row["index"]
        if not 0 <= i < len(seeds.rows) or row.get("row") != seeds.rows[i] or not isinstance(
                row.get("completion"), str) or not isinstance(row.get("reward"), (int, float)):
            raise BuildError(f"{out / FILES['generations']}: record for problem {i} does not belong to this "
                             f"sample (row {row.get('row')!r}); the directory holds another build")
        gens.setdefault(i, row)
    return gens


def _load_extractions(out: Path, rows: list[dict[str, Any]],
                      gens: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    exts: dict[int, dict[str, Any]] = {}
    for row in rows:
        i = row["index"]
        if i not in gens or row.get("kind") != _KIND[gens[i]["reward"] > 0] or not isinstance(row.get("items"), list):
            raise BuildError(f"{out / FILES['extractions']}: record for memory {i} matches no saved generation")
        exts.setdefault(i, row)
    return exts


def _generate(run: RunDir, client: LLMClient, seeds: SeedSet, gens: dict[int, dict[str, Any]], config: BuildConfig,
              counts: _Counts, progress: bool) -> None:
    """Alg. 2 lines 2-7: one graded completion per pending problem, saved per batch."""
    from sgsd.verifier import grade

    settings = dataclasses.replace(config.generation, seed=config.seed)
    todo = [i for i in range(len(seeds.rows)) if i not in gens]
    for batch in _batches(todo, config.batch_size, "generate", progress):
        replies = _ask(client, [memory_generation_prompt(seeds.problems[i].problem) for i in batch], settings)
        counts.generation_requests += len(batch)
        saved = []
        for i, reply in zip(batch, replies):
            if reply.text is None:
                counts.generation_failures += 1
                continue
            verdict = grade(reply.text, seeds.problems[i].answer or "", timeout_s=config.grade_timeout_s)
            saved.append({"index": i, "row": seeds.rows[i], "completion": reply.text,
                          "reward": 1.0 if verdict.correct else 0.0, "predicted_answer": verdict.extracted,
                          "grade_method": verdict.method})
        run.append_log(FILES["generations"], saved)
        gens.update((row["index"], row) for row in saved)


def _extract(run: RunDir, client: LLMClient, memories: dict[int, dict[str, Any]], exts: dict[int, dict[str, Any]],
             config: BuildConfig, counts: _Counts, progress: bool) -> None:
    """Alg. 2 lines 8-14: Tab. 7 for each success, Tab. 8 for each failure, saved per batch."""
    settings = dataclasses.replace(config.extraction, seed=config.seed)
    todo = [i for i in memories if i not in exts]
    for batch in _batches(todo, config.batch_size, "extract", progress):
        kinds = [_KIND[memories[i]["reward"] > 0] for i in batch]
        replies = _ask(client, [extraction_prompt(memories[i], k) for i, k in zip(batch, kinds)], settings)
        counts.extraction_requests += len(batch)
        saved = []
        for i, kind, reply in zip(batch, kinds, replies):
            if reply.text is None:
                counts.extraction_failures += 1
                continue
            parsed = parse_items(reply.text, kind)
            error = parsed.error or (None if parsed.items else "no valid item")
            saved.append({"index": i, "kind": kind, "items": parsed.items, "dropped": parsed.dropped,
                          "truncated": parsed.truncated, "error": error})
        run.append_log(FILES["extractions"], saved)
        exts.update((row["index"], row) for row in saved)


def _finish(out: Path, client: LLMClient, seeds: SeedSet, spec: str, gens: dict[int, dict[str, Any]],
            exts: dict[int, dict[str, Any]], config: BuildConfig, counts: _Counts, progress: bool,
            started: float, cache: ReplyCache | None = None) -> BuildResult:
    """Raw candidates (Alg. 2 lines 9-14), Alg. 3 merge (line 15), metadata; all atomic."""
    candidates: dict[str, list[Any]] = {"general_skills": [], "common_mistakes": []}
    for i in sorted(exts):
        kind = exts[i]["kind"]
        cls, prefix = (GeneralSkill, "gen_cand") if kind == "general_skills" else (CommonMistake, "err_cand")
        for item in exts[i]["items"][:config.limit(kind)]:
            candidates[kind].append(cls(f"{prefix}_{len(candidates[kind]) + 1:06d}", **item))
    successes = sum(g["reward"] > 0 for g in gens.values())
    parse_failures = sum(e["error"] is not None for e in exts.values())
    pending_gen, pending_ext = len(seeds.rows) - len(gens), len(gens) - len(exts)
    raw_path, bank_path = out / FILES["raw"], out / FILES["bank"]
    source = f"{out / FILES['memories']}"
    meta: dict[str, Any] = {
        "model": model_identity(spec), "client": _USERINFO.sub(r"\1***@", str(getattr(client, "name", ""))),
        "data": seeds.label, "data_sha256": seeds.sha256, "num_problems": len(seeds.rows), "seed": config.seed,
        "complete": pending_gen == 0 and pending_ext == 0,
        "counts": {"problems": len(seeds.rows), "generated": len(gens), "successes": successes,
                   "failures": len(gens) - successes, "pending_generations": pending_gen,
                   "extracted": len(exts), "pending_extractions": pending_ext,
                   "candidates": {k: len(v) for k, v in candidates.items()},
                   "extraction_parse_failures": parse_failures,
                   "dropped_items": sum(e["dropped"] for e in exts.values())},
        "this_run": {"generation_requests": counts.generation_requests,
                     "extraction_requests": counts.extraction_requests,
                     "request_failures": {"generation": counts.generation_failures,
                                          "extraction": counts.extraction_failures}},
        "settings": {**{k: v for k, v in dataclasses.asdict(config).items()
                        if k not in ("generation", "extraction", "merge")},
                     "generation": dataclasses.asdict(config.generation),
                     "extraction": dataclasses.asdict(config.extraction),
                     "merge": dataclasses.asdict(config.merge)},
        "files": dict(FILES),
    }
    bank = merged = None
    if any(candidates.values()):
        raw = SkillBank(general_skills=tuple(candidates["general_skills"]),
                        common_mistakes=tuple(candidates["common_mistakes"]),
                        metadata={"source": f"single-memory extraction from {source} using {meta['client']}",
                                  "generation_mode": "single_memory_parallel_candidates",
                                  "merge_recommended": True, "total_memories_processed": len(exts),
                                  "success_memories": successes, "failure_memories": len(gens) - successes,
                                  "batch_size": config.batch_size, "parse_failures": parse_failures})
        raw.save(raw_path)
        tick = time.perf_counter()
        merged = merge_bank(raw, client, group_size=config.group_size, patience=config.patience,
                            max_layers=config.max_layers, settings=config.merge, progress=progress,
                            source=str(raw_path), cache=cache, batch_size=config.batch_size)
        counts.seconds["merge"] = time.perf_counter() - tick
        diag = merged.metadata["merge_diagnostics"]
        merge_failures = sum(diag[k]["request_failures"] for k in _KIND.values())
        meta["this_run"]["request_failures"]["merge"] = merge_failures
        meta["counts"]["merge_parse_failures"] = sum(diag[k]["parse_failures"] for k in _KIND.values())
        meta["counts"]["merged_groups"] = sum(diag[k]["merged_groups"] for k in _KIND.values())
        meta["complete"] = meta["complete"] and merge_failures == 0  # a rerun retries them (replies are saved)
        asked = sum(diag[k]["requests"] + diag[k]["reused_replies"] for k in _KIND.values())
        meta["counts"]["merge_requests"] = asked
        if asked and not meta["counts"]["merged_groups"]:
            merged = None  # unmerged candidates are raw_candidates.json, never a bank labelled as merged
    if any(candidates.values()) and merged is not None:
        bank = merged.with_items(metadata={**merged.metadata, "batch_size": config.batch_size,
                                           "cold_start": {k: meta[k] for k in ("model", "data", "num_problems",
                                                                               "seed")}})
        bank.save(bank_path)
        meta["counts"]["bank"] = {"general_skills": len(bank.general_skills),
                                  "common_mistakes": len(bank.common_mistakes)}
        meta["merge_layers"] = {"general_skills": len(merged.metadata["general_merge_layers"]),
                                "common_mistakes": len(merged.metadata["common_mistake_merge_layers"])}
    else:  # nothing extracted, or a merge that merged nothing: no bank labelled as merged
        for stale in ((raw_path, bank_path) if not any(candidates.values()) else (bank_path,)):
            stale.unlink(missing_ok=True)  # never leave a bank that disagrees with build.json
    counts.seconds["total"] = time.perf_counter() - started
    meta["this_run"]["seconds"] = {k: round(v, 3) for k, v in counts.seconds.items()}
    meta["client_stats"] = dataclasses.asdict(client.stats) if hasattr(client, "stats") else {}
    atomic_write_json(out / FILES["build"], meta)
    return BuildResult(out, bank, meta)
