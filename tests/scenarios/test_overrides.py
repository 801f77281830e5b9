"""--set is read one way by every command (run, sweep, validate, testbed, code): VALUE as TOML, else a string."""

from __future__ import annotations

import click
import pytest

from scenarios.overrides import nested, parse_sets


def test_values_are_read_as_toml_else_kept_as_text() -> None:
    got = parse_sets(("a=3", "b=0.5", "c=true", "d=[0, 0.1]", "e=\"x y\"", "f=word", "g={ kind = \"poisson\" }",
                      "h=1e-3", " i.j =2"))
    assert got == {"a": 3, "b": 0.5, "c": True, "d": [0, 0.1], "e": "x y", "f": "word", "g": {"kind": "poisson"},
                   "h": 0.001, "i.j": 2}
    assert isinstance(got["a"], int) and isinstance(got["b"], float)
    assert parse_sets(("path=results/x=1",)) == {"path": "results/x=1"}  # only the first '=' splits


@pytest.mark.parametrize("item", ["novalue", "=3", " =3"])
def test_a_pair_without_a_key_is_a_usage_error(item: str) -> None:
    with pytest.raises(click.UsageError, match="KEY=VALUE"):
        parse_sets((item,))


def test_deep_nesting_is_one_line() -> None:
    with pytest.raises(click.UsageError, match="nested too deeply"):
        parse_sets(("a=" + "[" * 5000 + "]" * 5000,))


def test_dotted_keys_nest_and_a_later_key_wins() -> None:
    assert nested({"train.epochs": 3, "train.lr": 0.1, "seed": 1}) == {"train": {"epochs": 3, "lr": 0.1}, "seed": 1}
    assert nested({"a": 1, "a.b": 2}) == {"a": {"b": 2}}
    assert nested({"a.b": 2, "a": 1}) == {"a": 1}
