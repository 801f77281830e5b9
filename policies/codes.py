"""The codes every engine, the testbed and the result readers share: what a server hosts, what a task is for,
how a query was answered. Standard library only."""

from __future__ import annotations

from resultschema import ANSWER_KINDS

# what a server hosts: an expert index (>= 0), or one of these
CODED, SPARE, BACKUP = -1, -2, -3
HOST_NAMES = {CODED: "coded", SPARE: "spare", BACKUP: "backup"}

# what a task is for
ROLE_DIRECT, ROLE_REPLICA, ROLE_HEDGE, ROLE_GROUP, ROLE_BACKUP = range(5)

# how a query was answered: the index into ANSWER_KINDS (records store the index; new kinds go last)
HOW = ANSWER_KINDS
HOW_DIRECT, HOW_REPLICA, HOW_HEDGE, HOW_DECODED, HOW_BACKUP = (
    ANSWER_KINDS.index(name) for name in ("direct", "replica", "hedge", "decoded", "backup"))


def host_name(host: int) -> str:
    """A server's host as results name it: the expert index as text, or 'coded' / 'spare' / 'backup'."""
    return str(host) if host >= 0 else HOST_NAMES[host]
