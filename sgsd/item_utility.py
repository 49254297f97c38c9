"""Per-item utility of skills and mistakes, learned from training (beyond the paper).

The paper's polarity (eq. 13, Tab. 2) sorts every (rollout, teacher) into one of five
categories; this module remembers them per bank item. Each teacher is a rank-wise pair
(skill ``g_k``, mistake ``e_k``) with retrieval weight ``alpha_k``; when it is scored
on a rollout, BOTH items of the pair are credited the teacher's category with weight
``alpha_k``, and one use. The totals live in the bank, in each item's extra key::

    "utility": {"helpful": w, "warning": w, "over_suppressive": w,
                "misleading": w, "neutral": w, "uses": n}

=================  ========  =========================  ==========
category           outcome   robust support ``a_k``     polarity
=================  ========  =========================  ==========
helpful            success   ``a_k > eps_a``            +1
warning            failure   ``a_k < -eps_a``           +1
over_suppressive   success   ``a_k < -eps_a``           -1
misleading         failure   ``a_k > eps_a``            -1
neutral            either    ``|a_k| <= eps_a``          0
=================  ========  =========================  ==========

:func:`utility_score` turns a record into one number for ranking (used to prune the
lowest-utility dynamic items at capacity, :mod:`sgsd.updater`): the alpha-weighted mean
polarity of the item's teachers, shrunk towards 0 by a prior weight::

    score = (helpful + warning - over_suppressive - misleading) / (total + prior)

with ``total`` the sum of all five weights (neutral included) and ``prior`` =
:data:`PRIOR_WEIGHT` = 1.0, about 8 uses at the uniform ``alpha = 1/8`` of K = 8
teachers. The score lies in (-1, 1); an unused item scores exactly 0; a handful of uses
cannot reach the extremes (3 helpful uses at alpha 0.125 score 0.27, 300 score 0.97);
an item that is mostly neutral (its teacher rarely moves the student's tokens) scores
near 0, between items that are validated and items that are reversed.

Flow in a trainer: :meth:`UtilityTracker.observe` every step (cheap, in memory),
:meth:`UtilityTracker.apply` before the bank is updated or saved, so pruning sees
the latest counts. torch is imported only by the functions that take tensors, so the
bank and the CLI stay light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sgsd.bank import UTILITY_KEY, UTILITY_RECORD_KEYS, BankItem, SkillBank, check_utility_record

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "CATEGORIES",
    "PRIOR_WEIGHT",
    "RECORD_KEYS",
    "UTILITY_KEY",
    "UtilityTracker",
    "check_utility_record",
    "classify_teachers",
    "utility_of",
    "utility_score",
]

CATEGORIES = UTILITY_RECORD_KEYS[:-1]  # the five teacher categories of Tab. 2, then "uses"
RECORD_KEYS = UTILITY_RECORD_KEYS
PRIOR_WEIGHT = 1.0  # pseudo-weight of polarity 0 every item starts with (see module doc)
_DIGITS = 6  # stored weights are rounded to this many decimals (JSON stays short)
_POSITIVE = ("helpful", "warning")
_NEGATIVE = ("over_suppressive", "misleading")


# --------------------------------------------------------------------- classify
def classify_teachers(support: torch.Tensor, outcome_sign: torch.Tensor, threshold: float) -> list[list[str]]:
    """Tab. 2 category of every (rollout, teacher).

    Args:
        support: robust support ``a_k`` (eqs. 11-12), ``[B, K]``.
        outcome_sign: ``[B]``, +1 verified success, -1 failure (0 counts as neither:
            every teacher of that rollout is neutral, as ``teacher_polarity`` gives 0).
        threshold: ``eps_a >= 0``, the neutral zone ``|a_k| <= eps_a``.

    Returns:
        ``B`` lists of ``K`` names from :data:`CATEGORIES`. Agrees with
        :func:`sgsd.objective.teacher_polarity`: helpful/warning where it gives +1,
        over_suppressive/misleading where -1, neutral where 0 (NaN support is neutral).
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if support.dim() != 2 or outcome_sign.shape != support.shape[:1]:
        raise ValueError(f"support must be [B, K] and outcome_sign [B]; got {tuple(support.shape)} "
                         f"and {tuple(outcome_sign.shape)}")
    import torch

    a = support.detach().cpu()  # compared in its own dtype, exactly as teacher_polarity does
    s = outcome_sign.detach().cpu().unsqueeze(-1)
    up, down = a > threshold, a < -threshold  # both False for NaN
    success, failure = s > 0, s < 0
    code = torch.full(a.shape, CATEGORIES.index("neutral"), dtype=torch.long)
    code[success & up] = CATEGORIES.index("helpful")
    code[failure & down] = CATEGORIES.index("warning")
    code[success & down] = CATEGORIES.index("over_suppressive")
    code[failure & up] = CATEGORIES.index("misleading")
    return [[CATEGORIES[c] for c in row] for row in code.tolist()]


# --------------------------------------------------------------------- records
def _zeros() -> dict[str, float]:
    return dict.fromkeys(RECORD_KEYS, 0.0)


def utility_of(item: BankItem | Mapping[str, Any]) -> dict[str, float]:
    """The stored record of a bank item (or of a raw item dict), every key present as a
    float; all zeros when the item has none."""
    extra = item if isinstance(item, Mapping) else item.extra
    raw = extra.get(UTILITY_KEY) or {}
    out = _zeros()
    out.update({k: float(raw[k]) for k in RECORD_KEYS if k in raw})
    return out


def utility_score(item: BankItem | Mapping[str, Any], prior: float = PRIOR_WEIGHT) -> float:
    """``(helpful + warning - over_suppressive - misleading) / (total weight + prior)``.

    The alpha-weighted mean polarity of the item's teachers, shrunk towards 0 by
    ``prior`` (see the module doc). Unused items score 0; the result is in (-1, 1).
    """
    u = utility_of(item)
    signed = sum(u[c] for c in _POSITIVE) - sum(u[c] for c in _NEGATIVE)
    total = sum(u[c] for c in CATEGORIES)
    denom = total + prior
    return signed / denom if denom > 0 else 0.0


def _merged(stored: Mapping[str, float], add: Mapping[str, float]) -> dict[str, float | int]:
    out: dict[str, float | int] = {c: round(stored[c] + add.get(c, 0.0), _DIGITS) for c in CATEGORIES}
    out["uses"] = int(round(stored["uses"] + add.get("uses", 0.0)))
    return out


# --------------------------------------------------------------------- tracker
class UtilityTracker:
    """Accumulates per-item utility between two :meth:`apply` calls.

    In memory: ``pending`` (item id -> record increments since the last apply), a
    per-teacher window of category weights (for :meth:`metrics`; each teacher counted
    once, not once per item), and the number of ids dropped because they had left the
    bank. Everything is plain JSON (:meth:`state_dict`), for checkpoint/resume.
    """

    def __init__(self) -> None:
        self._pending: dict[str, dict[str, float]] = {}
        self._window: dict[str, float] = _zeros()  # categories + "uses" (teacher slots)
        self._dropped = 0

    def observe(
        self,
        skill_ids: Sequence[Sequence[str | None]],
        mistake_ids: Sequence[Sequence[str | None]],
        support: torch.Tensor,
        alpha: torch.Tensor,
        outcome_sign: torch.Tensor,
        threshold: float,
    ) -> None:
        """Credit one batch.

        Args:
            skill_ids, mistake_ids: ``B`` rows of up to ``K`` ids, rank-aligned with the
                teacher slots (a row may be shorter when ``K_x < K``).
            support: ``[B, K]`` robust support (``SGSDOutput.support``).
            alpha: ``[B, K]`` teacher weights (eq. 6).
            outcome_sign: ``[B]`` +1 success / -1 failure.
            threshold: ``eps_a`` used for the polarity (0 when thresholding is ablated).

        A slot is absent, and skipped, when its alpha is not > 0 or either id is None
        (or missing); otherwise the skill and the mistake are both credited the
        teacher's category with weight ``alpha[b, k]`` and one use.
        """
        B = len(skill_ids)
        if len(mistake_ids) != B or support.dim() != 2 or support.shape[0] != B or alpha.shape != support.shape:
            raise ValueError(
                f"need B={B} rows of skill and mistake ids ({len(mistake_ids)} mistake rows) and support/alpha "
                f"[B, K]; got support {tuple(support.shape)}, alpha {tuple(alpha.shape)}")
        K = support.shape[1]
        for b in range(B):
            if len(skill_ids[b]) > K or len(mistake_ids[b]) > K:
                raise ValueError(f"row {b}: {len(skill_ids[b])} skill / {len(mistake_ids[b])} mistake ids "
                                 f"for K={K} teacher slots")
        categories = classify_teachers(support, outcome_sign, threshold)
        weights = alpha.detach().double().tolist()
        for b in range(B):
            for k in range(K):
                w = weights[b][k]
                skill = skill_ids[b][k] if k < len(skill_ids[b]) else None
                mistake = mistake_ids[b][k] if k < len(mistake_ids[b]) else None
                if not w > 0 or skill is None or mistake is None:
                    continue
                cat = categories[b][k]
                self._window[cat] += w
                self._window["uses"] += 1
                for item_id in (skill, mistake):
                    rec = self._pending.setdefault(item_id, _zeros())
                    rec[cat] += w
                    rec["uses"] += 1

    def pending(self) -> dict[str, dict[str, float]]:
        """A copy of what was observed since the last :meth:`apply`: item id -> record."""
        return {item_id: dict(rec) for item_id, rec in self._pending.items()}

    def apply(self, bank: SkillBank) -> SkillBank:
        """Add the pending records onto the items' stored utility and clear them.

        Ids no longer in the bank (pruned since they were observed) are dropped silently
        (counted in ``sgsd/utility/dropped_ids``). Returns a new bank, or ``bank``
        itself when nothing pending is in it.
        """
        if not self._pending:
            return bank
        pending, self._pending = self._pending, {}
        self._window = _zeros()
        collections: dict[str, list] = {}
        touched = 0
        for collection in ("general_skills", "common_mistakes"):
            items = []
            for item in bank.items(collection):
                add = pending.pop(item.item_id, None)
                if add is not None:
                    extra = {**item.extra, UTILITY_KEY: _merged(utility_of(item), add)}
                    item = replace(item, extra=MappingProxyType(extra))
                    touched += 1
                items.append(item)
            collections[collection] = items
        self._dropped += len(pending)  # whatever is left was not found in the bank
        if not touched:
            return bank
        return bank.with_items(**collections)

    def metrics(self) -> dict[str, float]:
        """Logging view of the window since the last :meth:`apply` (reading clears nothing).

        ``sgsd/utility/<category>_weight``: the category's share of the alpha weight of
        the present teachers (each teacher once); ``sgsd/utility/teacher_uses``: teacher
        slots observed; ``sgsd/utility/items_pending``: distinct items credited;
        ``sgsd/utility/dropped_ids``: ids dropped by apply so far (items pruned while
        pending).
        """
        total = sum(self._window[c] for c in CATEGORIES)
        out = {f"sgsd/utility/{c}_weight": (self._window[c] / total if total > 0 else 0.0) for c in CATEGORIES}
        out["sgsd/utility/teacher_uses"] = float(self._window["uses"])
        out["sgsd/utility/items_pending"] = float(len(self._pending))
        out["sgsd/utility/dropped_ids"] = float(self._dropped)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON: ``{"version": 1, "pending": {...}, "window": {...}, "dropped": n}``."""
        return {"version": 1, "pending": self.pending(), "window": dict(self._window), "dropped": self._dropped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (validated; a bad state changes nothing)."""
        if not isinstance(state, Mapping) or state.get("version") != 1:
            raise ValueError(f"not a UtilityTracker state (version 1 expected): {str(state)[:200]}")
        pending, window = state.get("pending", {}), state.get("window", {})
        if not isinstance(pending, Mapping):
            raise ValueError(f"UtilityTracker state 'pending' must be an object, got {type(pending).__name__}")
        for item_id, rec in pending.items():
            try:
                check_utility_record(rec)
            except ValueError as exc:
                raise ValueError(f"UtilityTracker state 'pending' id {item_id!r}: {exc}") from None
        try:
            check_utility_record(window)
        except ValueError as exc:
            raise ValueError(f"UtilityTracker state 'window': {exc}") from None
        dropped = state.get("dropped", 0)
        if isinstance(dropped, bool) or not isinstance(dropped, int) or dropped < 0:
            raise ValueError(f"UtilityTracker state 'dropped' must be an integer >= 0, got {dropped!r}")
        self._pending = {str(i): utility_of({UTILITY_KEY: rec}) for i, rec in pending.items()}
        self._window = utility_of({UTILITY_KEY: window})
        self._dropped = dropped
