"""What a result folder is called and how its numbers are named: the one place the writer (`scenarios/`), the
reader (`reports/`) and the simulator's answer codes (`sim/`) take them from. Standard library only.

Units are in the names: times in milliseconds end in `_ms`, percentages in `_pct`, seconds in `_s`.
"""

from __future__ import annotations

SCHEMA_VERSION = 2  # summary.json's layout; a reader refuses a newer one and migrates older ones
LATENCY_KEYS = ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "p999_ms")  # per policy in summary.json and sweep.parquet
ANSWER_KINDS = ("direct", "replica", "hedge", "decoded", "backup")  # how a query was answered; new kinds go last

# the files of a `coinsim run` result folder
SUMMARY = "summary.json"
SCENARIO = "scenario.toml"
QUERIES = "queries.parquet"
SWEEP = "sweep.parquet"
NDA = "nda.csv"
PROFILE = "profile.csv"
SERVED_PROFILE = "served_profile.csv"
CALIBRATION = "calibration.json"
OUTPUTS = "outputs.npz"

# `coinsim testbed --compare FOLDER OTHER`: its folder inside FOLDER, its summary's kind, and the `service` its
# fidelity.csv gives the other run (which stands where the simulator stands)
COMPARED_PREFIX = "compared-"
COMPARE_KIND = "testbed-compare"
OTHER_RUN = "other run"
