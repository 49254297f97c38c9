"""Benchmark the library's two hot paths and print their figures (no pass/fail).

1. The SGSD objective (forward + backward) at B=64, K=8, T=1024 on CPU: wall time and
   peak extra memory, also as a ratio to the size of the teacher log-prob tensor
   ``[B, K, T]`` (the one input that scales with K).
2. Retrieval of 512 problems against a 1,000-item bank with the packaged MiniLM
   encoder: cold cache, warm bank cache with a new batch of problems, fully warm, and
   after adding 5 items to the bank — with the number of texts the encoder embedded
   in each case (bank items must be 0 warm and 5 after adding 5).

    .venv/bin/python scripts/bench_library.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch

from sgsd.bank import CommonMistake, GeneralSkill, SkillBank
from sgsd.datasets import load_problems, shipped_path
from sgsd.objective import ObjectiveConfig, sgsd_objective
from sgsd.retrieval import SentenceTransformerEncoder, SkillRetriever


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so the peak below is this run's.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def bench_objective(B: int = 64, K: int = 8, T: int = 1024, repeats: int = 5) -> dict:
    torch.manual_seed(0)
    student_base = -torch.rand(B, T) * 4
    teacher = -torch.rand(B, K, T) * 4
    mask = torch.rand(B, T) > 0.1
    alpha = torch.softmax(torch.randn(B, K), -1)
    sign = torch.where(torch.rand(B) > 0.5, 1.0, -1.0)
    cfg = ObjectiveConfig()

    def step() -> None:
        student = student_base.clone().requires_grad_(True)
        out = sgsd_objective(student, teacher, mask, alpha, sign, cfg)
        out.loss.mean().backward()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    exact = _reset_peak_rss()
    before = _rss_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak = _rss_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extra_mib = max(peak - before, 0) / 1024 if peak is not None and before is not None else float("nan")
    teacher_mib = teacher.numel() * teacher.element_size() / 2**20
    return {
        "shape": f"B={B} K={K} T={T}",
        "fwd_bwd_ms_median": 1000 * sorted(times)[len(times) // 2],
        "peak_extra_mib": extra_mib,
        "teacher_tensor_mib": teacher_mib,
        "peak_over_teacher_tensor": extra_mib / teacher_mib,
        "peak_measure": "VmHWM reset" if exact else "ru_maxrss (upper bound)",
        "torch_threads": torch.get_num_threads(),
    }


class CountingEncoder:
    def __init__(self, inner) -> None:
        self.inner, self.name = inner, inner.name
        self.documents = self.queries = 0

    def encode_queries(self, texts):
        self.queries += len(texts)
        return self.inner.encode_queries(texts)

    def encode_documents(self, texts):
        self.documents += len(texts)
        return self.inner.encode_documents(texts)


def _synthetic_bank(n_skills: int = 500, n_mistakes: int = 500) -> SkillBank:
    raw = SkillBank.load(shipped_path("skill_banks", "qwen3_1.7b_raw_candidates.json"))
    skills = [
        GeneralSkill(f"gen_{i:04d}", f"{s.title} (variant {i // len(raw.general_skills)})", s.principle, s.when_to_apply)
        for i, s in ((i, raw.general_skills[i % len(raw.general_skills)]) for i in range(n_skills))
    ]
    mistakes = [
        CommonMistake(f"err_{i:04d}", f"{m.description} (variant {i // len(raw.common_mistakes)})", m.why_it_happens,
                      m.how_to_avoid)
        for i, m in ((i, raw.common_mistakes[i % len(raw.common_mistakes)]) for i in range(n_mistakes))
    ]
    return SkillBank(general_skills=tuple(skills), common_mistakes=tuple(mistakes))


def bench_retrieval(n_problems: int = 512, top_k: int = 8) -> list[dict]:
    problems = [p.problem for p in load_problems(shipped_path("train", "math_train.jsonl"))]
    batch_a, batch_b = problems[:n_problems], problems[n_problems:2 * n_problems]
    bank = _synthetic_bank()
    encoder = CountingEncoder(SentenceTransformerEncoder())
    retriever = SkillRetriever(encoder, top_k=top_k)
    rows = []

    def case(name: str, new_bank: SkillBank, batch: list[str]) -> None:
        docs0, queries0 = encoder.documents, encoder.queries
        t0 = time.perf_counter()
        retriever.set_bank(new_bank)
        results = retriever.retrieve(batch)
        elapsed = time.perf_counter() - t0
        assert all(r.num_teachers == top_k for r in results)
        rows.append({"case": name, "seconds": elapsed, "bank_items_embedded": encoder.documents - docs0,
                     "problems_embedded": encoder.queries - queries0})

    case("cold cache", bank, batch_a)
    case("warm bank, new 512 problems", bank, batch_b)
    case("fully warm (same bank, same problems)", bank, batch_b)
    grown = bank.with_items(
        general_skills=[*bank.general_skills, *(GeneralSkill(f"gen_new_{i}", f"New skill {i}: casework on parity",
                                                              "Split into even and odd cases.", "Integer problems")
                                                 for i in range(3))],
        common_mistakes=[*bank.common_mistakes, *(CommonMistake(f"err_new_{i}", f"New mistake {i}: sign slip",
                                                                 "Rushing", "Recheck signs") for i in range(2))],
    )
    case("after adding 5 items", grown, batch_b)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    objective = bench_objective()
    retrieval = bench_retrieval()
    if args.json:
        print(json.dumps({"objective": objective, "retrieval": retrieval}))
        return
    print(f"SGSD objective, forward+backward, {objective['shape']}, CPU x{objective['torch_threads']} threads")
    print(f"  median time          {objective['fwd_bwd_ms_median']:.1f} ms")
    print(f"  peak extra memory    {objective['peak_extra_mib']:.1f} MiB ({objective['peak_measure']})")
    print(f"  teacher tensor       {objective['teacher_tensor_mib']:.1f} MiB  "
          f"-> peak / teacher tensor = {objective['peak_over_teacher_tensor']:.2f}")
    print("Retrieval, 512 problems x 1,000-item bank (500 skills + 500 mistakes), K=8, MiniLM on CPU")
    print(f"  {'case':40s} {'seconds':>8s} {'bank items embedded':>20s} {'problems embedded':>18s}")
    for r in retrieval:
        print(f"  {r['case']:40s} {r['seconds']:8.2f} {r['bank_items_embedded']:20d} {r['problems_embedded']:18d}")


if __name__ == "__main__":
    main()
