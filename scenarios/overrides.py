"""`--set KEY=VALUE` overrides, read one way for every command: VALUE as TOML (numbers, booleans, strings,
lists, inline tables), else kept as the string it is."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from typing import Any

import click


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """--set a.b=VALUE pairs as {dotted key: value}; a malformed pair is a usage error (one line, exit 2)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--set expects KEY=VALUE, got '{item}'")
        try:
            out[key.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = text
        except RecursionError:
            raise click.UsageError(f"--set {key.strip()}: value nested too deeply to read") from None
    return out


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1, "a.c": 2} -> {"a": {"b": 1, "c": 2}} (a later key wins over an earlier one it collides with)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return out
