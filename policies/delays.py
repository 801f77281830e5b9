"""Hedge delays that follow the system they hedge. Standard library only.

A hedge delay given as a percentile ("p95") means: that percentile of the time the expert's own instance takes to
answer. A fixed delay is that percentile as predicted before serving; a *running* delay is that percentile as the
serving system sees it, over its last `window` routed queries of the expert — what an operator who hedges at the
observed p95 runs, and what keeps a delay predicted too short from hedging several times the queries it meant to.

What is observed: each routed query, when answered, gives its expert one value — the query's latency if its
expert's own output answered it, else +inf (another path answered first, so the expert had not answered by then;
it had waited at least the delay). With a delay d, a query is answered directly by time x <= d exactly when its
expert's output came back by x (no other path exists before d), so the share of values <= d is the share of the
expert's outputs back within d, and the running q-th percentile settles where that share is q %: the percentile of
the expert's own response, although the hedged queries' responses are cut short.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Sequence

INF = math.inf


class RunningDelay:
    """Per expert: the `quantile`-th percentile (0-100) of its last `window` observed values (see the module
    docstring), from the moment the window holds a fifth of its size; before that, the `start` delay. When the
    percentile is +inf (more of the window was answered another way than the percentile leaves), the delay is the
    largest finite value in the window (the expert's slowest direct answer seen): a lower bound of the percentile
    that keeps the hedges going."""

    def __init__(self, start: Sequence[float], quantile: float, window: int) -> None:
        if not 0.0 < quantile < 100.0:
            raise ValueError(f"running delay: percentile must be in (0, 100), got {quantile}")
        if window < 5:
            raise ValueError(f"running delay: window must hold at least 5 queries, got {window}")
        self.quantile, self.window = float(quantile), int(window)
        self.min_count = max(5, window // 5)
        self._now = [float(x) for x in start]
        self._recent: list[deque[float]] = [deque() for _ in self._now]
        self._sorted: list[list[float]] = [[] for _ in self._now]

    def observe(self, expert: int, value_ms: float) -> None:
        """A routed query for `expert` was answered: its latency if directly, else +inf."""
        recent, ordered = self._recent[expert], self._sorted[expert]
        recent.append(value_ms)
        insort(ordered, value_ms)
        if len(recent) > self.window:
            del ordered[bisect_left(ordered, recent.popleft())]
        n = len(ordered)
        if n < self.min_count:
            return
        k = min(n - 1, max(0, math.ceil(self.quantile / 100.0 * n) - 1))  # the inverted-CDF order statistic
        d = ordered[k]
        if d == INF:
            finite = bisect_left(ordered, INF)
            d = ordered[finite - 1] if finite else self._now[expert]
        self._now[expert] = d

    def delay(self, expert: int) -> float:
        """The hedge delay now for a routed query of `expert`; -1: an ensemble query (the largest of them)."""
        return max(self._now) if expert < 0 else self._now[expert]

    def delays(self) -> list[float]:
        return list(self._now)
