"""The codes every engine, the testbed and the result readers share: what a server hosts, what a task is for,
how a query was answered. Standard library only."""

from __future__ import annotations

from resultschema import ANSWER_KINDS

# what a server hosts: an expert index (>= 0), or one of these
CODED, SPARE, BACKUP, PARITY = -1, -2, -3, -4
HOST_NAMES = {CODED: "coded", SPARE: "spare", BACKUP: "backup", PARITY: "parity"}

# what a task is for
ROLE_DIRECT, ROLE_REPLICA, ROLE_HEDGE, ROLE_GROUP, ROLE_BACKUP, ROLE_PARITY = range(6)

# how a query was answered: the index into ANSWER_KINDS (records store the index; new kinds go last)
HOW = ANSWER_KINDS
HOW_DIRECT, HOW_REPLICA, HOW_HEDGE, HOW_DECODED, HOW_BACKUP = (
    ANSWER_KINDS.index(name) for name in ("direct", "replica", "hedge", "decoded", "backup"))


def host_name(host: int) -> str:
    """A server's host as results name it: the expert index as text, or 'coded' / 'spare' / 'backup' / 'parity'."""
    return str(host) if host >= 0 else HOST_NAMES[host]


# which servers' outputs formed an answer: a bitmask with bit s for server s. Up to 63 servers it is stored as
# int64; a larger deployment keeps Python ints (object arrays), which have no width limit
MASK_WORD_SERVERS = 63


def mask_dtype(n_servers: int) -> str:
    """The numpy dtype of a run's answer masks: 'int64' when every bit fits one word, else 'object'."""
    return "int64" if n_servers <= MASK_WORD_SERVERS else "object"


def mask_servers(mask: int) -> list[int]:
    """The servers whose bits are set in an answer mask, ascending."""
    mask, found = int(mask), []
    while mask:
        low = mask & -mask
        found.append(low.bit_length() - 1)
        mask ^= low
    return found
