"""A tiny Qwen3 that knows the rulebook task partly: pretrained here, on 2 CPU cores, in minutes.

The random tiny model of :mod:`sgsd.tiny_model` never writes a correct answer, so a run on it
has no learning to show. This module pretrains a model of the same conventions (the byte-level
BPE of :func:`sgsd.tiny_model.build_tokenizer`, trained here on the task's own corpus; the
Qwen3 chat template; ``<|im_end|>`` as eos) on :func:`sgsd.rulebook_corpus.pretraining_corpus`,
a corpus of the rulebook task (:mod:`sgsd.rulebook`) in every prompt format the recipe's
methods render:

========== ============================================================ ==========================
kind       prompt (rendered by the project's own prompt builders)        the solution's rule
========== ============================================================ ==========================
plain      the student prompt (:func:`sgsd.prompts.student_prompt`)      the family's prior
pair       SGSD's teacher prompt: one skill + one mistake (Fig. 6)       first rule the guidance
list       several skills and mistakes (GRPO+Skill, OPSD+Skill)          states for the problem's
sdar       SDAR's ``[Privileged Skill Information]`` prefix              family; else the prior
skill_sd   Skill-SD's trajectory summaries
answer     OPSD's reference answer                                       the right rule
summary    Skill-SD's summary request for one attempt                    (a JSON note of the rule
                                                                         the attempt used)
========== ============================================================ ==========================

The prior is :attr:`sgsd.rulebook.Family.known`: the student knows some operations well and some
hardly, so sampled unguided it is right on some problems and wrong on others; a teacher shown the
right rule is far better, one shown a misleading rule far worse. :func:`measure` measures exactly
that on held-out problems, sampled at the training temperature, and :func:`build_task_model`
refuses to save a model outside :data:`TARGETS`.

The loss is on the response tokens only. Everything is seeded: the corpus, the initialisation,
the batch order; one build is ``python scripts/build_task_model.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sgsd import rulebook
from sgsd.datasets import Problem
from sgsd.rulebook_corpus import Example, pretraining_corpus

__all__ = [
    "BUILD_FILE",
    "TARGETS",
    "GuidanceGapError",
    "PretrainConfig",
    "build_task_model",
    "measure",
    "pretrain",
    "shipped_model_dir",
]

BUILD_FILE = "task_model.json"  # the build's settings and measured figures, beside the weights
SHIPPED_NAME = "rulebook_qwen3"  # sgsd/data/models/<name>: the model the rulebook CPU runs train


def shipped_model_dir() -> Path:
    """The shipped pretrained rulebook model (``sgsd/data/models/rulebook_qwen3``)."""
    from sgsd.datasets import shipped_path

    path = shipped_path("models", SHIPPED_NAME)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: the shipped rulebook model is missing; rebuild it with "
                                f"python scripts/build_task_model.py --output {path}")
    return path


@dataclass(frozen=True)
class PretrainConfig:
    """The model's size and the pretraining's budget (the defaults are what is shipped)."""

    hidden_size: int = 96
    layers: int = 3
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 256
    vocab_size: int = 1024
    corpus_size: int = 50_000
    # The student's plain prompts alone first, until the model copies digits: a model this small
    # learns to (its induction heads form) only after a plateau of ~1,000-1,500 steps, whose length
    # varies with the seed (measured: the loss sits at 0.93, then falls to 0.08 within ~300 steps);
    # short sequences make the wait cheap. Then ``steps`` on every kind.
    plain_until_loss: float = 0.2  # mean loss of the last 50 plain steps that ends the first phase
    plain_max_steps: int = 3000
    steps: int = 1600
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    max_length: int = 640  # the longest corpus sequence fits (a list of 4 + 4 items is ~400 tokens)


#: What the build asserts on held-out problems, sampled at the training temperature: accuracy
#: unguided in [0.15, 0.60]; with the right guidance in SGSD's teacher prompt >= 20 points more;
#: with misleading guidance below unguided (issue 21).
TARGETS = {"plain": (0.15, 0.60), "right_gain": 0.20}


class GuidanceGapError(RuntimeError):
    """The pretrained model is outside :data:`TARGETS`; nothing was saved."""


def _encode(tokenizer, example: Example) -> tuple[list[int], list[int]]:
    from sgsd.prompts import ChatFormat, apply_chat

    prompt = example.prefix + apply_chat(tokenizer, example.user, ChatFormat(enable_thinking=example.enable_thinking))
    reply = tokenizer.encode(example.reply + tokenizer.eos_token, add_special_tokens=False)
    return tokenizer.encode(prompt, add_special_tokens=False), reply


def _train(model, sequences: list[tuple[list[int], list[int]]], kinds: Sequence[str], config: PretrainConfig,
           pad_id: int, log: Callable[[str], None]) -> tuple[list[float], int]:
    """AdamW on the reply tokens: plain examples until their loss is below
    ``config.plain_until_loss``, then ``config.steps`` on all kinds (cosine decay to 5% of the
    rate). Returns the losses and the first phase's length."""
    import torch

    generator = torch.Generator().manual_seed(config.seed)
    optim = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                              betas=(0.9, 0.98))

    def batches_of(indices: list[int]) -> list[list[int]]:
        # batches of similar lengths (sorted, then cut), drawn in a seeded order: little padding
        order = sorted(indices, key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
        return [order[i: i + config.batch_size] for i in range(0, len(order), config.batch_size)]

    def step_on(batch: list[tuple[list[int], list[int]]], rate: float) -> float:
        width = max(len(p) + len(r) for p, r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (p, r) in enumerate(batch):
            ids[row, : len(p) + len(r)] = torch.tensor(p + r)
            labels[row, len(p): len(p) + len(r)] = torch.tensor(r)
            mask[row, : len(p) + len(r)] = 1
        for group in optim.param_groups:
            group["lr"] = rate
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        return loss.item()

    def draw(batches: list[list[int]], queue: list[int]) -> list[tuple[list[int], list[int]]]:
        if not queue:
            queue.extend(torch.randperm(len(batches), generator=generator).tolist())
        return [sequences[i] for i in batches[queue.pop()]]

    losses, start = [], time.perf_counter()

    def report(done: int, phase: str) -> None:
        if done % 200 == 0 or done == 1:
            log(f"{phase} step {done}: loss {sum(losses[-200:]) / len(losses[-200:]):.4f} "
                f"({time.perf_counter() - start:.0f} s)")

    def plain_rate(step: int) -> float:
        # warm-up, then a cosine from lr towards 0.3 lr over plain_max_steps: the copying forms at
        # ~0.7-0.8 of the peak rate (measured); at a constant 3e-3 it had not after 2,200 steps
        warm = min(1.0, (step + 1) / config.warmup)
        return config.lr * warm * (0.3 + 0.7 * 0.5 * (1 + math.cos(math.pi * step / config.plain_max_steps)))

    model.train()
    plain, queue = batches_of([i for i, k in enumerate(kinds) if k == "plain"]), []
    while len(losses) < config.plain_max_steps:
        losses.append(step_on(draw(plain, queue), plain_rate(len(losses))))
        report(len(losses), "plain")
        if len(losses) >= 50 and sum(losses[-50:]) / 50 < config.plain_until_loss:
            break
    else:
        raise GuidanceGapError(f"the model did not learn to copy digits in {config.plain_max_steps} plain steps "
                               f"(loss {sum(losses[-50:]) / 50:.3f}, needs < {config.plain_until_loss})")
    first = len(losses)
    log(f"plain phase done after {first} steps (loss {sum(losses[-50:]) / 50:.4f})")
    every, queue = batches_of(list(range(len(sequences)))), []
    peak = plain_rate(first)  # the second phase decays from where the first stopped, to 5% of lr
    for step in range(config.steps):
        rate = 0.05 * config.lr + (peak - 0.05 * config.lr) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        losses.append(step_on(draw(every, queue), rate))
        report(step + 1, "all kinds")
    model.eval()
    return losses, first


def _generate(model, tokenizer, prompts: Sequence[str], *, temperature: float, top_p: float, max_new_tokens: int,
              seed: int, batch_size: int = 64) -> list[str]:
    """Sampled completions of chat-rendered ``prompts`` (left-padded batches), decoded."""
    import torch

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts[start: start + batch_size]]
            width = max(map(len, encoded))
            ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, e in enumerate(encoded):
                ids[row, width - len(e):] = torch.tensor(e)
                mask[row, width - len(e):] = 1
            with torch.no_grad():
                gen = model.generate(ids, attention_mask=mask, do_sample=True, temperature=temperature, top_p=top_p,
                                     top_k=0, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                     pad_token_id=tokenizer.pad_token_id)
            out.extend(tokenizer.decode(g[width:], skip_special_tokens=True) for g in gen)
    return out


def measure(model, tokenizer, problems: Sequence[Problem], *, temperature: float = 1.1, top_p: float = 0.95,
            max_new_tokens: int = 48, seed: int = 0,
            prompts: Sequence[str] = ("plain", "right", "misleading")) -> dict[str, Any]:
    """Accuracy on ``problems`` (graded by :func:`sgsd.verifier.grade`) in three prompts, sampled at
    ``temperature``/``top_p`` (the CPU runs' training sampling): ``plain`` (the student prompt,
    thinking off), ``right`` and ``misleading`` (SGSD's teacher prompt with the family's right, or
    misleading, skill and mistake; thinking on, the teacher's default), or those of ``prompts``.
    Also per family."""
    from sgsd.prompts import ChatFormat, apply_chat, student_prompt, teacher_prompt
    from sgsd.verifier import grade

    bank = rulebook.rulebook_bank()
    skills = {s.skill_id: s for s in bank.general_skills}
    mistakes = {m.mistake_id: m for m in bank.common_mistakes}
    student, teacher = ChatFormat(enable_thinking=False), ChatFormat(enable_thinking=True)
    rendered: dict[str, list[str]] = {which: [] for which in prompts}
    for p in problems:
        name = rulebook.family_of(p.problem).name
        for which in prompts:
            if which == "plain":
                rendered[which].append(apply_chat(tokenizer, student_prompt(p.problem), student))
                continue
            pair = teacher_prompt(p.problem, skills[f"skill_{name}_{which}"], mistakes[f"mistake_{name}_{which}"])
            rendered[which].append(apply_chat(tokenizer, pair, teacher))
    result: dict[str, Any] = {"problems": len(problems), "temperature": temperature, "top_p": top_p}
    per_family: dict[str, dict[str, float]] = {}
    for which, texts in rendered.items():
        replies = _generate(model, tokenizer, texts, temperature=temperature, top_p=top_p,
                            max_new_tokens=max_new_tokens, seed=seed)
        correct = [grade(r, p.answer).correct for r, p in zip(replies, problems)]
        result[which] = sum(correct) / max(1, len(correct))
        for p, ok in zip(problems, correct):
            fam = per_family.setdefault(rulebook.family_of(p.problem).name, {})
            fam.setdefault(which, []).append(ok)  # type: ignore[arg-type]
    result["per_family"] = {name: {k: sum(v) / len(v) for k, v in fam.items()} for name, fam in per_family.items()}
    return result


def check_targets(figures: dict[str, Any]) -> list[str]:
    """What in ``figures`` (:func:`measure`) misses :data:`TARGETS` (empty: all met)."""
    low, high = TARGETS["plain"]
    problems = []
    if not low <= figures["plain"] <= high:
        problems.append(f"unguided accuracy {figures['plain']:.3f} outside [{low}, {high}]")
    if figures["right"] < figures["plain"] + TARGETS["right_gain"]:
        problems.append(f"right guidance {figures['right']:.3f} is not {TARGETS['right_gain']:.2f} above unguided "
                        f"{figures['plain']:.3f}")
    if not figures["misleading"] < figures["plain"]:
        problems.append(f"misleading guidance {figures['misleading']:.3f} is not below unguided {figures['plain']:.3f}")
    return problems


def pretrain(config: PretrainConfig = PretrainConfig(), log: Callable[[str], None] = print):
    """The corpus, its tokenizer and the model trained on it: ``(model, tokenizer, losses,
    plain_steps)`` (the first phase's length, :func:`_train`)."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    from sgsd.tiny_model import EOS_TOKEN, PAD_TOKEN, build_tokenizer

    start = time.perf_counter()
    corpus = pretraining_corpus(config.corpus_size, seed=config.seed)
    texts = [e.prefix + e.user for e in corpus] + [e.reply for e in corpus]
    tokenizer = build_tokenizer(texts, vocab_size=config.vocab_size, model_max_length=4096)
    sequences = [_encode(tokenizer, e) for e in corpus]
    longest = max(len(p) + len(r) for p, r in sequences)
    if longest > config.max_length:
        raise ValueError(f"a corpus sequence is {longest} tokens, over max_length={config.max_length}")
    log(f"corpus: {len(corpus)} examples, {len(tokenizer)} tokens in the vocabulary, longest {longest} tokens "
        f"({time.perf_counter() - start:.0f} s)")
    pad_id, eos_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN), tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    model_config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.kv_heads,
        head_dim=config.hidden_size // config.heads, max_position_embeddings=4096, max_window_layers=config.layers,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0}, tie_word_embeddings=True,
        bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Qwen3ForCausalLM(model_config).float()
        losses, plain_steps = _train(model, sequences, [e.kind for e in corpus], config, pad_id, log)
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=[eos_id, pad_id],
                                               pad_token_id=pad_id)
    return model, tokenizer, losses, plain_steps


def build_task_model(output_dir: str | Path, config: PretrainConfig = PretrainConfig(), *, eval_problems: int = 300,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Pretrain (:func:`pretrain`), measure on ``eval_problems`` validation problems, and save to
    ``output_dir`` only if :data:`TARGETS` hold (else :class:`GuidanceGapError`, naming each miss).
    Returns the build record written to ``output_dir/task_model.json``."""
    import torch

    from sgsd.tiny_model import _make_world_readable

    start = time.perf_counter()
    model, tokenizer, losses, plain_steps = pretrain(config, log)
    train_s = time.perf_counter() - start
    figures = measure(model, tokenizer, rulebook.problems("val", eval_problems, seed=config.seed))
    log(f"accuracy on {eval_problems} validation problems at temperature {figures['temperature']}: unguided "
        f"{figures['plain']:.3f}, right guidance {figures['right']:.3f}, misleading {figures['misleading']:.3f}")
    misses = check_targets(figures)
    if misses:
        raise GuidanceGapError("the pretrained model misses its targets (nothing saved): " + "; ".join(misses))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _make_world_readable(out.glob("*.safetensors"))
    record = {"config": asdict(config), "figures": figures, "targets": TARGETS, "final_loss": losses[-1], "plain_steps": plain_steps,
              "seconds": round(time.perf_counter() - start, 1), "train_seconds": round(train_s, 1),
              "torch": torch.__version__, "parameters": sum(p.numel() for p in model.parameters())}
    (out / BUILD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
