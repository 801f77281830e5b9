"""Choosing a hyperparameter (COIN's λ, task arithmetic's α) on the P coding samples."""

from __future__ import annotations

import math
from collections.abc import Sequence

from coin.errors import CodingError

RULES = ("score", "loss")


def pick(rows: Sequence[dict], rule: str = "score") -> int:
    """Index of the winning grid row.

    ``score``: highest P-sample NDA (agreement when unlabeled); ties, which are common because experts fit
    their own training samples, go to the lower coding loss. ``loss``: lowest coding loss (eq. 5).
    """
    if rule not in RULES:
        raise CodingError(f"unknown selection rule '{rule}'; choose from {', '.join(RULES)}")
    if not rows:
        raise CodingError("empty hyperparameter grid")

    def key(i: int) -> tuple:
        r = rows[i]
        s = r["score"] if not math.isnan(r["score"]) else -math.inf
        return (-r["loss"],) if rule == "loss" else (round(s, 9), -r["loss"])

    return max(range(len(rows)), key=key)
