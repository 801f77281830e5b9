"""Serving policies' rules, one module per kind, shared by the simulator's engines and the testbed's frontend
(standard library only). `RULES` is the registry: kind -> `Rules` class, in the order results list them."""

from __future__ import annotations

import accel  # noqa: F401  (first: whether the compiled rules run is decided before they load)
from policies.backup import Backup
from policies.coded import Coded
from policies.hedged import Hedged
from policies.parity import Parity
from policies.replication import Replication
from policies.rules import Rules, Serving
from policies.uncoded import Uncoded

RULES: dict[str, type[Rules]] = {cls.kind: cls for cls in (Uncoded, Replication, Hedged, Coded, Backup, Parity)}
KINDS = tuple(RULES)


def rules_for(kind: str) -> type[Rules]:
    """The rules of a policy kind; KeyError naming the known kinds when there is none."""
    try:
        return RULES[kind]
    except KeyError:
        raise KeyError(f"unknown policy kind {kind!r} (choose from {', '.join(KINDS)})") from None


__all__ = ["KINDS", "RULES", "Rules", "Serving", "rules_for"]
