"""Names of the mutants of models/zoo.py's build_zoo that change its cache-key code: the payloads handed to
config_key and the calls that load, save or name an entry by its key. Read from mutmut 3's ./mutants folder:

    nice -n 19 mutmut run --max-children 1 $(python tests/mutation/key_mutants.py --sample)

(--sample: a fixed seeded sample of 40, since each build_zoo mutant trains a tiny zoo, ~15 s.)
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path


def _key_lines(func: ast.FunctionDef) -> set[int]:
    """Line offsets (from the def) of config_key(...) calls and of cache.load/save/entry calls."""
    lines: set[int] = set()
    for node in ast.walk(func):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        owner = getattr(node.func, "value", None)
        if name == "config_key" or (name in ("load", "save", "entry") and isinstance(owner, ast.Name)
                                    and owner.id == "cache"):
            lines.update(range(node.lineno - func.lineno, node.end_lineno - func.lineno + 1))
    return lines


def key_mutants(path: Path = Path("mutants/models/zoo.py"), function: str = "build_zoo") -> list[str]:
    text = path.read_text()
    source = text.splitlines()
    funcs = {node.name: node for node in ast.parse(text).body
             if isinstance(node, ast.FunctionDef) and node.name.startswith(f"x_{function}__mutmut_")}
    orig_node = funcs.pop(f"x_{function}__mutmut_orig")
    orig = source[orig_node.lineno - 1:orig_node.end_lineno]
    keep = _key_lines(orig_node)
    names = []
    for name, node in funcs.items():
        body = source[node.lineno - 1:node.end_lineno]
        matcher = difflib.SequenceMatcher(a=orig[1:], b=body[1:], autojunk=False)
        changed = {i + 1 for tag, i1, i2, _, _ in matcher.get_opcodes() if tag != "equal" for i in range(i1, i2)}
        if changed & keep:
            names.append(f"models.zoo.{name}")
    return names


def sample(names: list[str], k: int = 40, seed: int = 11) -> list[str]:
    """The fixed sample used when running every key mutant would take too long (same before and after)."""
    import random

    return sorted(random.Random(seed).sample(names, min(k, len(names))))


if __name__ == "__main__":
    import sys

    names = key_mutants()
    print(" ".join(sample(names) if "--sample" in sys.argv else names))
