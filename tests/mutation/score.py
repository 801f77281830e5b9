"""Mutation score per module (and per function) from mutmut 3's result files under ./mutants.

Usage, from the repository root after `nice -n 19 mutmut run --max-children 1 [MUTANT_NAMES...]`:

    python tests/mutation/score.py [--functions] [--survivors] [--only NAMES_FILE] [ROOT ...]

ROOTs (default ./mutants) are folders holding mutmut's *.meta files; with several (e.g. saved copies of runs
over different mutants), a mutant's verdict is taken from the last root that checked it. --only restricts
the table to the mutant names listed in a file (whitespace separated), to compare runs on one set.

score = killed / (killed + survived) over the mutants that were checked; 'no tests' (no selected test calls the
function), 'not checked' (left out of a sampled run) and 'skipped' are counted apart and not in the score.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def results(*roots: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for root in roots or (Path("mutants"),):
        for meta in sorted(Path(root).rglob("*.meta")):
            for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
                status = STATUS.get(code, "suspicious")
                if status != "not checked" or key not in out:
                    out[key] = status
    return out


def function_of(key: str) -> tuple[str, str]:
    module, _, rest = key.rpartition(".x")
    rest = re.sub(r"__mutmut_\d+$", "", rest)
    return module, rest.removeprefix("_").strip("ǁ").replace("ǁ", ".")


def table(res: dict[str, str], by_function: bool) -> list[str]:
    groups: dict[str, Counter] = defaultdict(Counter)
    for key, status in res.items():
        module, function = function_of(key)
        groups[f"{module}.{function}" if by_function else module][status] += 1
    lines = [f"{'':44s} {'killed':>6s} {'surv.':>6s} {'timeout':>7s} {'notest':>6s} {'unchk':>6s}  score"]
    for name, c in sorted(groups.items()):
        checked = c["killed"] + c["timeout"] + c["survived"]
        score = f"{100 * (c['killed'] + c['timeout']) / checked:5.1f}%" if checked else "   n/a"
        lines.append(f"{name:44s} {c['killed']:6d} {c['survived']:6d} {c['timeout']:7d} {c['no tests']:6d} "
                     f"{c['not checked']:6d}  {score}")
    return lines


if __name__ == "__main__":
    args = sys.argv[1:]
    only = None
    if "--only" in args:
        at = args.index("--only")
        only = set(Path(args[at + 1]).read_text().split())
        del args[at:at + 2]
    res = results(*[Path(a) for a in args if not a.startswith("--")])
    if only is not None:
        res = {k: v for k, v in res.items() if k in only}
    print("\n".join(table(res, "--functions" in sys.argv)))
    if "--survivors" in sys.argv:
        print("\n".join(k for k, s in res.items() if s == "survived"))
