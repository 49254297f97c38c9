"""A tiny Qwen3 that knows the rulebook task partly: pretrained here, on 2 CPU cores, in minutes.

The random tiny model of :mod:`sgsd.tiny_model` never writes a correct answer, so a run on it
has no learning to show. This module pretrains a model of the same conventions (the byte-level
BPE of :func:`sgsd.tiny_model.build_tokenizer`, trained here on the task's own corpus; the
Qwen3 chat template; ``<|im_end|>`` as eos) on :func:`pretraining_corpus`, a corpus of the
rulebook task (:mod:`sgsd.rulebook`) in every prompt format the recipe's methods render:

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
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sgsd import rulebook
from sgsd.bank import CommonMistake, GeneralSkill
from sgsd.datasets import Problem

__all__ = [
    "BUILD_FILE",
    "TARGETS",
    "GuidanceGapError",
    "PretrainConfig",
    "build_task_model",
    "corpus_example",
    "measure",
    "pretraining_corpus",
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

#: kind -> share of the corpus
CORPUS_MIX: dict[str, float] = {"plain": 0.34, "pair": 0.28, "list": 0.09, "sdar": 0.07, "skill_sd": 0.07,
                                "answer": 0.08, "summary": 0.07}


@dataclass(frozen=True)
class Example:
    """One corpus example: the chat messages' user content (or a raw prefix before the chat, SDAR),
    whether the chat template's thinking is on, and the assistant's reply."""

    kind: str
    user: str
    reply: str
    enable_thinking: bool
    prefix: str = ""  # text before the chat template's first token (SDAR's privileged prefix)


def _prior_rule(family: rulebook.Family, rng: random.Random) -> str:
    """The rule an unguided student picks for ``family`` (:attr:`Family.known`, then its confusion)."""
    u = rng.random()
    if u < family.known:
        return family.rule
    if u < family.known + (1 - family.known) * rulebook.CONFUSION_SHARE:
        return family.confused_with
    others = [r for r in rulebook.RULES if r not in (family.rule, family.confused_with)]
    return rng.choice(others)


def _guided_rule(family: rulebook.Family, texts: Sequence[str], rng: random.Random) -> str:
    """The first rule ``texts`` state for ``family`` (in order), else the student's prior."""
    head = f"{family.name} means: "
    for text in texts:
        at = text.find(head)
        if at >= 0:
            rule = rulebook.rule_used(text[at:], family.name)
            if rule is not None:
                return rule
    return _prior_rule(family, rng)


def _items(family: rulebook.Family, rng: random.Random, count: int) -> tuple[list[GeneralSkill], list[CommonMistake]]:
    """``count`` skills and ``count`` mistakes as retrieval would bring them: the family's own
    (right or misleading) first more often than not, other families' items mixed in."""
    bank = rulebook.rulebook_bank()
    own_s = [s for s in bank.general_skills if f"_{family.name}_" in s.skill_id]
    own_m = [m for m in bank.common_mistakes if f"_{family.name}_" in m.mistake_id]
    other_s = [s for s in bank.general_skills if f"_{family.name}_" not in s.skill_id]
    other_m = [m for m in bank.common_mistakes if f"_{family.name}_" not in m.mistake_id]

    def draw(own, other):
        picked = []
        pool_own, pool_other = rng.sample(own, len(own)), rng.sample(other, len(other))
        for _ in range(count):
            if pool_own and (rng.random() < 0.7 or not pool_other):
                picked.append(pool_own.pop())
            else:
                picked.append(pool_other.pop())
        return picked

    return draw(own_s, other_s), draw(own_m, other_m)


def corpus_example(kind: str, problem: Problem, rng: random.Random) -> Example:
    """One example of ``kind`` (:data:`CORPUS_MIX`) for a rulebook ``problem``."""
    from sgsd.prompts import answer_teacher_prompt, guidance_block, skill_student_prompt, student_prompt, teacher_prompt
    from sgsd.skill_sources import Skill, TrajectorySummary, summary_prompt
    from sgsd.records import RolloutRecord
    from sgsd.teacher_contexts import sdar_prefix, skill_sd_guidance

    family = rulebook.family_of(problem.problem)
    digits = list(problem.problem.rsplit(" ", 1)[1].rstrip("?"))
    think = rng.random() < 0.5

    def solved(rule: str) -> str:
        return rulebook.solution_text(family.name, digits, rule)

    if kind == "plain":
        return Example(kind, student_prompt(problem.problem), solved(_prior_rule(family, rng)), rng.random() < 0.2)
    if kind == "pair":
        (skill,), (mistake,) = _items(family, rng, 1)
        rule = _guided_rule(family, [skill.principle, mistake.how_to_avoid], rng)
        return Example(kind, teacher_prompt(problem.problem, skill, mistake), solved(rule), think)
    if kind == "list":
        skills, mistakes = _items(family, rng, rng.randint(2, 4))
        texts = [s.principle for s in skills] + [m.how_to_avoid for m in mistakes]
        if rng.random() < 0.3:  # OPSD+Skill's teacher: the answer too
            block = guidance_block(skills, mistakes, reference_answer=problem.answer)
            user = block + "\n\n" + student_prompt(problem.problem)
            return Example(kind, user, solved(family.rule), think)
        return Example(kind, skill_student_prompt(problem.problem, skills, mistakes),
                       solved(_guided_rule(family, texts, rng)), think)
    if kind == "sdar":
        files = rulebook.rulebook_skill_files()
        own = [f for f in files if f["name"] == family.name]
        u = rng.random()
        chosen = own if u < 0.5 else files if u < 0.75 else [rng.choice(files)]
        text = "\n\n".join(f["text"] for f in chosen)
        return Example(kind, student_prompt(problem.problem), solved(_guided_rule(family, [text], rng)), think,
                       prefix=sdar_prefix(text))
    if kind == "skill_sd":
        notes = []
        for _ in range(rng.randint(1, 3)):
            used = _prior_rule(family, rng)
            ok = used == family.rule
            notes.append(Skill("note", TrajectorySummary("note", problem.problem, *_summary_fields(family, used, ok),
                                                         success=ok).text))
        texts = [n.text for n in notes if "Golden workflow" in n.text]
        user = skill_sd_guidance(notes) + "\n\n" + student_prompt(problem.problem)
        return Example(kind, user, solved(_guided_rule(family, texts, rng)), think)
    if kind == "answer":
        return Example(kind, answer_teacher_prompt(problem.problem, problem.answer), solved(family.rule), think)
    if kind == "summary":
        used = _prior_rule(family, rng)
        ok = used == family.rule
        record = RolloutRecord(problem.problem, solved(used), 1.0 if ok else 0.0)
        fields = dict(zip(("success_analysis", "mistake_analysis", "golden_workflow"),
                          _summary_fields(family, used, ok)))
        return Example(kind, summary_prompt(record), json.dumps(fields), rng.random() < 0.5)
    raise ValueError(f"unknown corpus kind {kind!r}: one of {', '.join(CORPUS_MIX)}")


def _summary_fields(family: rulebook.Family, used: str, success: bool) -> tuple[str, str, str]:
    """A skill note of one attempt: a success names the rule it used as the workflow; a failure
    names the rule that failed and leaves the workflow empty (the writer knows no better rule)."""
    said = rulebook.statement(family.name, used)
    if success:
        return f"Stating the rule first worked: {said}", "", f"1. {said} 2. Apply it to the list. 3. Box the digits."
    return "", f"The attempt used the wrong rule for {family.name}: {rulebook.RULES[used].wording}.", ""


def pretraining_corpus(count: int, seed: int = 0) -> list[Example]:
    """``count`` examples of the train split's problems, kinds drawn by :data:`CORPUS_MIX`."""
    rng = random.Random(f"corpus:{seed}")
    pool = rulebook.problems("train", 12_000, seed=seed)
    kinds, weights = zip(*CORPUS_MIX.items())
    return [corpus_example(rng.choices(kinds, weights)[0], rng.choice(pool), rng) for _ in range(count)]


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
