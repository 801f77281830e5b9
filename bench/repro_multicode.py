"""How decoding degrades with the number r of coded models (issue 6): N experts, r COIN-coded models with
Cauchy coding weights, every set of up to r missing experts decoded from all r coded outputs.

    python bench/repro_multicode.py [SCENARIO] [--r 1,2,3]

Prints, per r: the worst condition number over the square sub-systems, and the mean / worst NDA over all
missing sets of each size.
"""

from __future__ import annotations

import argparse

import pandas as pd

from coin.multicode import worst_condition
from scenarios.runner import prepare_networks
from scenarios.schema import load_scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="four-experts")
    parser.add_argument("--r", default="1,2,3")
    args = parser.parse_args()
    rows = []
    for r in (int(v) for v in args.r.split(",")):
        scenario, _ = load_scenario(args.scenario, {"sim.r": r, "coding.compare": [], "profile.samples": 5,
                                                    "profile.warmup": 0})
        facts = prepare_networks(scenario, quiet=True)
        condition = worst_condition(facts.answers.matrix)
        table = pd.DataFrame(facts.multi_decode)
        if table.empty:  # r = 1: the NDA table of the main method is the single-missing decode
            table = facts.nda.assign(missing=facts.nda["expert"])
        table["n_missing"] = table["missing"].str.count(",") + 1
        for size, group in table.groupby("n_missing"):
            rows.append({"r": r, "worst_condition": round(condition, 1), "missing": int(size),
                         "mean_nda": round(group["nda_pct"].mean(), 2), "worst_nda": round(group["nda_pct"].min(), 2),
                         "sets": len(group) // int(size)})
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
