"""The evaluation harness behind ``sgsd eval``: avg@k with the paper's protocol.

    sgsd eval --model PATH_OR_ID [--lora DIR | --verl-checkpoint DIR] --datasets aime24,aime25,hmmt25 -o OUT

Protocol (paper Sec. 4.1 and App. E.1), each a flag: 12 samples per problem, temperature
1.0, top-p 0.95, no top-k, at most 38912 new tokens, thinking on. The prompt is the
student's plain prompt (:func:`sgsd.prompts.student_prompt`) in the model's chat template;
Base+Skill mode (``skills=BANK``) shows the student the top-K retrieved skill-mistake
pairs instead (:func:`sgsd.prompts.skill_student_prompt`, the paper's Base+Skill row).
A sample is graded on its final answer: the text after the last ``</think>`` (a reply
whose thinking never closed has none), its last ``\\boxed{}`` checked by
:func:`sgsd.verifier.grade`. Metrics: :mod:`sgsd.eval.metrics`; tables: :mod:`sgsd.eval.report`.

Datasets are shipped benchmark names (``aime24``, ``aime25``, ``hmmt25``, ``amc2023`` or
``amc23``, ``math500``) or JSONL/JSON/parquet files of ``problem``/``answer`` rows; or
episode datasets (:mod:`sgsd.eval.episodes`): ``sokoban`` (the built-in seeded test levels)
or a parquet of episode rows from ``scripts/prepare_data.py --dataset sokoban``. An episode
dataset's samples are whole episodes, each level played ``samples`` times in lockstep
(:func:`sgsd.envs.play.play_episodes`: one ``generate`` call per round over the running
episodes, at most ``batch_size`` episodes at a time, each group seeded like a batch), each
saved as it ends; ``max_new_tokens`` bounds each turn's reply.

Output folder::

    OUT/run.json                  what shapes every sample: model, prompt mode, sampling
    OUT/<dataset>/run.json        the dataset (name, sha256 of the file, problem count)
    OUT/<dataset>/samples.jsonl   one line per sample (appended per batch, fsync'ed; an episode
                                  per line, appended as it ends, for an episode dataset)
    OUT/summary.json, summary.md  metrics per dataset and their average (atomic)
    OUT/merged_model/             a merged LoRA / verl model, until the evaluation completes

Resuming (both levels are :class:`sgsd.run_dir.RunDir`): rerun the same command; saved
samples are not regenerated. A rerun whose model, prompt mode or sampling differs is
refused, naming each difference; more datasets may be added to the same folder. A failed
request is not saved (the rerun retries it) and the summary says ``"complete": false``; in
an episode a failed request is an invalid reply (the episode goes on, and is saved).
Sample ``j`` of problem ``p`` has index ``p * n + j``; each call is seeded with
``seed + `` its first index (batches are runs of consecutive indices), so on vLLM, which
seeds request ``i`` of a call with ``seed + i``, every sample's seed is ``seed + index``.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgsd.atomic import atomic_write_json, atomic_write_text
from sgsd.checks import raising
from sgsd.datasets import BENCHMARKS, SKILL_BANKS, Problem, ProblemFileError, load_problems, resolve, source_label
from sgsd.eval.episodes import (EPISODE_KIND, check_episode_row, episode_dataset, episode_row,
                                episode_summary)
from sgsd.eval.metrics import GradedSample, score_problem, verifier_equivalent
from sgsd.eval.models import BACKENDS, ModelError, ModelSource, make_eval_client, pick_backend, prepare_model
from sgsd.llm.base import GenerationSettings, LLMClient
from sgsd.prompts import skill_student_prompt, student_prompt
from sgsd.retrieval import DEFAULT_ENCODER, RetrievalConfig, SentenceTransformerEncoder, SkillRetriever
from sgsd.run_dir import RunDir, RunDirError

__all__ = ["DATASET_LABELS", "EvalConfig", "EvalDataset", "EvalError", "EvalResult", "evaluate",
           "final_answer_part", "load_samples", "resolve_datasets"]

DATASET_LABELS = {"aime24": "AIME24", "aime25": "AIME25", "hmmt25": "HMMT25", "amc2023": "AMC23",
                  "math500": "MATH-500", "sokoban": "Sokoban"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SAMPLES, IDENTITY, MERGED = "samples.jsonl", "run.json", "merged_model"


class EvalError(ValueError):
    """Bad input, or an output folder holding another evaluation; the message names it."""


@dataclass(frozen=True)
class EvalConfig:
    samples: int = 12  # per problem, n (paper: avg@12)
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = -1  # -1: no top-k truncation
    max_new_tokens: int = 38912  # capped by the model's context (decisions.md)
    enable_thinking: bool = True
    seed: int = 0
    k: int | None = None  # pass@k and maj@k; None: k = samples
    batch_size: int = 256  # requests per generate() call and per saved batch
    limit: int | None = None  # the first N problems of each dataset
    skills: str | None = None  # Base+Skill: a bank path or shipped bank name
    encoder: str | None = None  # retrieval encoder (None: the packaged all-MiniLM-L6-v2)
    skills_top_k: int = 8  # skill-mistake pairs shown (the paper's retrieval K)
    grade_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        checks = [("samples", 1), ("batch_size", 1), ("seed", 0), ("k", 1), ("limit", 1)]
        for name, low in checks:
            value = getattr(self, name)
            if value is None and name in ("k", "limit"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise EvalError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.k is not None and self.k > self.samples:
            raise EvalError(f"k must be <= samples ({self.samples}): pass@k needs n >= k, got {self.k}")
        if not self.grade_timeout_s > 0:
            raise EvalError(f"grade_timeout_s must be > 0, got {self.grade_timeout_s!r}")
        # The sampling values are GenerationSettings' to check, the retrieval K RetrievalConfig's.
        with raising(EvalError):
            self.generation(self.seed)
        with raising(EvalError, lambda exc: exc.named("skills_top_k")):
            RetrievalConfig(top_k=self.skills_top_k)

    @property
    def pass_k(self) -> int:
        return self.samples if self.k is None else self.k

    def generation(self, seed: int) -> GenerationSettings:
        # timeout_s=0: no wall-clock cut (transformers would fail long replies as timeouts).
        return GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                  top_p=self.top_p, top_k=self.top_k, enable_thinking=self.enable_thinking,
                                  timeout_s=0, seed=seed)


@dataclass(frozen=True)
class EvalDataset:
    name: str  # output folder and table column
    source: str  # shipped name or absolute path
    sha256: str
    problems: tuple[Problem, ...]  # after ``limit``; empty for an episode dataset
    levels: tuple[dict[str, Any], ...] = ()  # an episode dataset's env specs, after ``limit``

    @property
    def episodes(self) -> bool:
        return bool(self.levels)

    @property
    def size(self) -> int:
        """Problems, or levels of an episode dataset."""
        return len(self.levels) if self.levels else len(self.problems)


@dataclass
class EvalResult:
    out_dir: Path
    summary: dict[str, Any]
    generated: int = 0  # samples saved by this run
    failed: int = 0  # requests the client gave up on (retried by a rerun)

    @property
    def complete(self) -> bool:
        return bool(self.summary.get("complete"))


def resolve_datasets(specs: Sequence[str], limit: int | None = None) -> list[EvalDataset]:
    """Shipped benchmark names or problem files, each with a reference answer per row; or
    episode datasets (``sokoban``, a parquet of episode rows)."""
    out: list[EvalDataset] = []
    for spec in specs:
        try:
            episodes = episode_dataset(spec, limit)
        except ImportError as exc:  # the environment's own dependency (TextArena for Sokoban)
            raise EvalError(f"dataset {spec!r}: {exc}") from None
        path = resolve(spec, "benchmark")
        if episodes is None and not path.is_file():
            raise EvalError(f"dataset {spec!r}: no such file, and not a shipped benchmark "
                            f"({', '.join(BENCHMARKS)}, amc23) nor the built-in sokoban levels")
        name = episodes[0] if episodes else path.stem
        if not _NAME_RE.match(name):
            raise EvalError(f"dataset {spec!r}: its name {name!r} is not usable as a folder name")
        if any(d.name == name for d in out):
            raise EvalError(f"two datasets are named {name!r}: rename one file")
        if episodes is not None:
            out.append(EvalDataset(name, episodes[1], episodes[2], (), episodes[3]))
            continue
        problems = load_problems(path, require_answer=True)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        out.append(EvalDataset(name, source_label(path), digest, tuple(problems[:limit] if limit else problems)))
    if not out:
        raise EvalError("no dataset given")
    return out


def final_answer_part(completion: str) -> str:
    """The reply after its last ``</think>``; '' when thinking opened and never closed."""
    if "</think>" in completion:
        return completion.rsplit("</think>", 1)[1]
    return "" if "<think>" in completion else completion


# --------------------------------------------------------------------- identity
def _prompt_identity(config: EvalConfig) -> dict[str, Any]:
    if config.skills is None:
        return {"mode": "plain"}
    path = resolve(config.skills, "bank")
    if not path.is_file():
        raise EvalError(f"--skills {config.skills!r}: no such file, and not a shipped bank "
                        f"({', '.join(SKILL_BANKS)})")
    return {"mode": "skills", "bank": str(path.resolve()), "bank_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "encoder": config.encoder or DEFAULT_ENCODER, "top_k": config.skills_top_k}


def _identity(model: dict[str, Any], config: EvalConfig) -> dict[str, Any]:
    sampling = {k: getattr(config, k) for k in ("samples", "temperature", "top_p", "top_k", "max_new_tokens",
                                                "enable_thinking", "seed")}
    return {"model": model, "prompt": _prompt_identity(config), "sampling": sampling}


def _dataset_identity(ds: EvalDataset) -> dict[str, Any]:
    identity = {"dataset": ds.name, "source": ds.source, "sha256": ds.sha256, "problems": ds.size}
    return {**identity, "kind": EPISODE_KIND} if ds.episodes else identity  # math folders keep their identity


def load_samples(run: RunDir, problems: int, samples: int,
                 log: list[dict[str, Any]] | None = None, *, episodes: bool = False) -> dict[int, dict[str, Any]]:
    """The saved samples of one dataset folder (``log``: its rows, already read) by index,
    checked against its shape (``episodes``: the lines are episodes, each with its outcome)."""
    rows: dict[int, dict[str, Any]] = {}
    for row in run.read_log(SAMPLES) if log is None else log:
        p, j = row.get("problem_index"), row.get("sample")
        if not (isinstance(p, int) and isinstance(j, int) and 0 <= p < problems and 0 <= j < samples
                and row["index"] == p * samples + j and isinstance(row.get("correct"), bool)
                and (not episodes or check_episode_row(row))):
            raise EvalError(f"{run.path / SAMPLES}: record {row['index']} does not fit {problems} problems x "
                            f"{samples} samples; the folder holds another evaluation")
        rows.setdefault(row["index"], row)
    return rows


# --------------------------------------------------------------------- the run
def evaluate(out_dir: str | Path, source: ModelSource | None, datasets: Sequence[str],
             config: EvalConfig = EvalConfig(), *, client: LLMClient | None = None,
             model_identity: dict[str, Any] | None = None, backend: str = "auto", backend_options: str = "",
             encoder: Any = None, keep_merged: bool = False, progress: bool = True) -> EvalResult:
    """Run (or continue) an evaluation into ``out_dir``; returns its summary.

    The client is built from ``source`` unless ``client`` is given (tests, custom
    backends; ``model_identity`` then names the model in ``run.json``). ``encoder``
    replaces the retrieval encoder of Base+Skill mode. Raises :class:`EvalError` for bad
    input; a KeyboardInterrupt keeps every finished batch.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    try:
        if backend not in BACKENDS:
            raise EvalError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if client is None:
            if source is None:
                raise EvalError("no model: give a ModelSource or a client")
            source = source.resolved()
        model = model_identity or (source.identity() if source else {"client": getattr(client, "name", "?")})
        chosen = resolve_datasets(datasets, config.limit)
        if config.skills is not None and any(ds.episodes for ds in chosen):
            raise EvalError("--skills (Base+Skill prompts) is for math datasets; "
                            f"{', '.join(ds.name for ds in chosen if ds.episodes)} is an episode dataset")
        identity = _identity(model, config)
        top = RunDir(out, IDENTITY, what="evaluation")
        saved_any = any(p.stat().st_size > 0 for p in out.glob(f"*/{SAMPLES}"))
        top_saved = top.check_identity(identity, has_records=saved_any)
        runs, done, fresh = {}, {}, []
        for ds in chosen:
            run = runs[ds.name] = RunDir(out / ds.name, IDENTITY, what=f"{ds.name} evaluation")
            log = run.read_log(SAMPLES)
            if not run.check_identity(_dataset_identity(ds), has_records=bool(log), informational=("source",)):
                fresh.append(ds)
            done[ds.name] = load_samples(run, ds.size, config.samples, log, episodes=ds.episodes)
    except (RunDirError, ModelError, ProblemFileError) as exc:
        raise EvalError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    if not top_saved:
        top.save_identity(identity)
    for ds in fresh:
        runs[ds.name].save_identity(_dataset_identity(ds))

    n = config.samples
    todo = {ds.name: [i for i in range(ds.size * n) if i not in done[ds.name]] for ds in chosen}
    math, episodic = [ds for ds in chosen if not ds.episodes], [ds for ds in chosen if ds.episodes]
    generated = failed = 0
    backend_used = None
    if any(todo.values()):
        prompts = _prompts(math, todo, config, encoder)
        if client is None:
            try:
                path = prepare_model(source, out / MERGED, log=lambda m: print(f"sgsd eval: {m}", file=sys.stderr))
                backend_used = pick_backend(backend)
                client = make_eval_client(path, backend_used, backend_options)
            except ModelError as exc:
                raise EvalError(str(exc)) from None
        generated, failed = _generate(client, math, todo, prompts, runs, done, config, progress)
        generated += _play(client, episodic, todo, runs, done, config, progress)
    result = EvalResult(out, write_summary(out, config, backend=backend_used,
                                           client=getattr(client, "name", None) if client else None,
                                           this_run={"generated": generated, "failed": failed,
                                                     "seconds": round(time.perf_counter() - started, 3)}),
                        generated, failed)
    if result.complete and not keep_merged:
        import shutil

        shutil.rmtree(out / MERGED, ignore_errors=True)
    return result


def _prompts(chosen: list[EvalDataset], todo: dict[str, list[int]], config: EvalConfig,
             encoder: Any) -> dict[str, dict[int, tuple[str, dict[str, Any]]]]:
    """User message (and retrieval record) of every problem with pending samples."""
    n = config.samples
    needed = {ds.name: sorted({i // n for i in todo[ds.name]}) for ds in chosen}
    if config.skills is None:
        return {ds.name: {p: (student_prompt(ds.problems[p].problem), {}) for p in needed[ds.name]} for ds in chosen}
    from sgsd.bank import SkillBank
    from sgsd.verl_data import retrieve_student_guidance  # the GRPO+Skill training prompts' retrieval

    bank = SkillBank.load(_prompt_identity(config)["bank"], require_nonempty=True)
    if encoder is None:
        try:
            encoder = SentenceTransformerEncoder(config.encoder)
        except (OSError, ValueError) as exc:
            raise EvalError(f"cannot load encoder {config.encoder!r}: {exc}") from None
    retriever = SkillRetriever(encoder, bank, top_k=config.skills_top_k)
    out = {}
    for ds in chosen:
        guidance = retrieve_student_guidance([ds.problems[p] for p in needed[ds.name]], retriever)
        out[ds.name] = {
            p: (skill_student_prompt(ds.problems[p].problem, skills, mistakes),
                {"skill_ids": [s.skill_id for s in skills], "mistake_ids": [m.mistake_id for m in mistakes]})
            for p, (skills, mistakes) in zip(needed[ds.name], guidance)}
    return out


def _batches(indices: list[int], size: int) -> list[list[int]]:
    """Runs of consecutive indices, at most ``size`` long (one seed offset per run)."""
    batches: list[list[int]] = []
    for i in indices:
        if batches and len(batches[-1]) < size and batches[-1][-1] == i - 1:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _generate(client: LLMClient, chosen: list[EvalDataset], todo: dict[str, list[int]],
              prompts: dict[str, dict[int, tuple[str, dict[str, Any]]]], runs: dict[str, RunDir],
              done: dict[str, dict[int, dict[str, Any]]], config: EvalConfig, progress: bool) -> tuple[int, int]:
    from tqdm.auto import tqdm

    from sgsd.verifier import grade

    n = config.samples
    generated = failed = 0
    bar = tqdm(total=sum(len(todo[ds.name]) for ds in chosen), desc="eval", unit="sample", file=sys.stderr,
               disable=not progress or not chosen, dynamic_ncols=True)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for ds in chosen:
                bar.set_description(f"eval {ds.name}")
                for batch in _batches(todo[ds.name], config.batch_size):
                    replies = list(client.generate([prompts[ds.name][i // n][0] for i in batch],
                                                   config.generation(config.seed + batch[0])))
                    if len(replies) != len(batch):  # never pair a reply with the wrong sample
                        replies = [None] * len(batch)
                    answers = [final_answer_part(r.text) if r is not None and r.text is not None else None
                               for r in replies]
                    verdicts = list(pool.map(
                        lambda a, i: None if a is None else grade(a, ds.problems[i // n].answer or "",
                                                                  timeout_s=config.grade_timeout_s),
                        answers, batch))
                    rows = []
                    for i, reply, verdict in zip(batch, replies, verdicts):
                        if verdict is None:
                            failed += 1
                            continue
                        problem = ds.problems[i // n]
                        rows.append({"index": i, "dataset": ds.name, "problem_index": i // n,
                                     "problem_id": problem.extra.get("id", problem.extra.get("unique_id", i // n)),
                                     "sample": i % n, "problem": problem.problem, "answer": problem.answer,
                                     "completion": reply.text, "extracted": verdict.extracted,
                                     "correct": verdict.correct, "grade_method": verdict.method,
                                     "tokens": reply.num_tokens, "finish_reason": reply.finish_reason,
                                     **prompts[ds.name][i // n][1]})
                    runs[ds.name].append_log(SAMPLES, rows)
                    done[ds.name].update((row["index"], row) for row in rows)
                    generated += len(rows)
                    bar.update(len(batch))
    finally:
        bar.close()
    return generated, failed


def _play(client: LLMClient, chosen: list[EvalDataset], todo: dict[str, list[int]], runs: dict[str, RunDir],
          done: dict[str, dict[int, dict[str, Any]]], config: EvalConfig, progress: bool) -> int:
    """Play the pending episodes of episode datasets, ``batch_size`` at a time in lockstep;
    each is saved (and counted) as it ends, so an interruption loses only those running."""
    from tqdm.auto import tqdm

    from sgsd.envs.play import play_episodes

    n = config.samples
    saved = 0
    bar = tqdm(total=sum(len(todo[ds.name]) for ds in chosen), desc="episodes", unit="episode", file=sys.stderr,
               disable=not progress or not chosen, dynamic_ncols=True)
    try:
        for ds in chosen:
            bar.set_description(f"eval {ds.name}")
            pending = todo[ds.name]
            for start in range(0, len(pending), config.batch_size):
                group = pending[start:start + config.batch_size]

                def save(play: Any, ds: EvalDataset = ds, group: list[int] = group) -> None:
                    nonlocal saved
                    row = episode_row(ds.name, group[play.index], n, play)
                    runs[ds.name].append_log(SAMPLES, [row])
                    done[ds.name][row["index"]] = row
                    saved += 1
                    bar.update(1)

                play_episodes(client, [ds.levels[i // n] for i in group], config.generation(config.seed + group[0]),
                              on_episode=save)
    finally:
        bar.close()
    return saved


# --------------------------------------------------------------------- summary
def _dataset_summary(identity: dict[str, Any], rows: dict[int, dict[str, Any]], n: int, k: int) -> dict[str, Any]:
    problems = identity["problems"]
    by_problem: dict[int, list[dict[str, Any]]] = {}
    for row in sorted(rows.values(), key=lambda r: r["index"]):
        by_problem.setdefault(row["problem_index"], []).append(row)
    scores = [score_problem([GradedSample(r["extracted"], r["correct"]) for r in group], k, verifier_equivalent)
              for group in by_problem.values()]
    tokens = [r["tokens"] for r in rows.values() if isinstance(r.get("tokens"), int)]
    reasons = [r.get("finish_reason") for r in rows.values() if r.get("finish_reason")]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    name = identity["dataset"]
    return {"label": DATASET_LABELS.get(name, name), "source": identity["source"], "problems": problems,
            "problems_scored": len(scores), "samples": len(rows), "pending_samples": problems * n - len(rows),
            f"avg@{n}": mean([s.accuracy for s in scores]), f"pass@{k}": mean([s.pass_at_k for s in scores]),
            f"maj@{k}": mean([s.maj_at_k for s in scores]),
            "format_rate": sum(s.with_answer for s in scores) / len(rows) if rows else None,
            "mean_tokens": mean(tokens), "truncated_rate": mean([float(r == "length") for r in reasons])}


def write_summary(out: Path, config: EvalConfig, *, backend: str | None = None, client: str | None = None,
                  this_run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every dataset folder of ``out`` and write ``summary.json`` and ``summary.md``."""
    import json

    from sgsd.eval.report import summary_markdown

    n, k = config.samples, config.pass_k
    identity = json.loads((out / IDENTITY).read_text(encoding="utf-8"))
    datasets: dict[str, Any] = {}
    for folder in sorted(p.parent for p in out.glob(f"*/{IDENTITY}")):
        run = RunDir(folder, IDENTITY)
        ds_identity = json.loads(run.identity_path.read_text(encoding="utf-8"))
        episodes = ds_identity.get("kind") == EPISODE_KIND
        rows = load_samples(run, ds_identity["problems"], n, episodes=episodes)
        datasets[folder.name] = (episode_summary(ds_identity, rows, n, k, DATASET_LABELS.get(folder.name, folder.name))
                                 if episodes else _dataset_summary(ds_identity, rows, n, k))
    scored = [d[f"avg@{n}"] for d in datasets.values() if d.get(f"avg@{n}") is not None]
    average: dict[str, Any] = {f"avg@{n}": sum(scored) / len(scored) if scored else None}
    if any(d.get("kind") == EPISODE_KIND for d in datasets.values()):
        solved = [d["success_rate"] for d in datasets.values() if d.get("success_rate") is not None]
        average["success_rate"] = sum(solved) / len(solved) if solved else None
    if backend is None and (out / "summary.json").exists():  # nothing generated now: keep what generated
        previous = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        backend, client = previous.get("backend"), previous.get("client")
    summary = {**identity, "n": n, "k": k, "backend": backend, "client": client,
               "complete": all(d.get("pending_samples", d.get("pending_episodes")) == 0 for d in datasets.values()),
               "datasets": datasets, "average": average,
               "this_run": this_run or {}}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary
