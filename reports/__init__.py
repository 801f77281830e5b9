"""Figures and the self-contained HTML report, rendered from result files only.

No torch, no simpy and none of the sim/models/coin/scenarios packages are imported here, so any old result
folder can be re-rendered on a machine with only matplotlib and pandas.

Public API
----------
- ``render(result_dir) -> Path``: write ``figures/*.png`` and ``report.html`` into the folder (atomically).
- ``load_result(result_dir) -> ResultData``: the checked contents of a result folder, in summary schema 2
  (every sweep point under ``points``, percentages in percent named ``*_pct``); folders written before the
  schema had a version are converted by name on reading, never by guessing from the size of a number.
- ``ReportError``: a ValueError with a one-line message for folders that cannot be rendered.
- Figure builders (DataFrames/dicts in, ``matplotlib.figure.Figure`` out): ``frontier`` (p99 / p99.9 against
  accuracy or agreement of what was answered, one marker per policy per point), ``latency_ccdf``,
  ``tail_vs_sweep``, ``accuracy_vs_sweep`` (all answers and decoded/backup answers alone, Wilson bands),
  ``answer_mix_vs_sweep``, ``answer_mix_bars``, ``extra_load_vs_sweep``, ``traffic_over_time``, ``nda_bars``
  (zoomed to the bars when they are close); the sweep figures take ``facet_by`` (the other axes of a grid: one
  panel per combination of their values); helpers ``policy_colors``, ``answer_fractions``, ``nda_table``,
  ``facet_groups``, ``time_average_in_system``, ``frontier_data`` (the frontier's numbers per point and
  policy), ``wilson_interval``, ``nda_axis_floor`` (where a zoomed NDA axis starts).
"""

from reports.figures import (
    accuracy_vs_sweep,
    answer_fractions,
    answer_mix_bars,
    answer_mix_vs_sweep,
    extra_load_vs_sweep,
    facet_groups,
    frontier,
    frontier_data,
    latency_ccdf,
    metric_vs_sweep,
    nda_axis_floor,
    nda_bars,
    nda_table,
    policy_colors,
    tail_vs_sweep,
    time_average_in_system,
    traffic_over_time,
    wilson_interval,
)
from reports.load import ReportError, ResultData, load_result
from reports.render import FIGURE_NAMES, render

__all__ = [
    "FIGURE_NAMES",
    "ReportError",
    "ResultData",
    "accuracy_vs_sweep",
    "answer_fractions",
    "answer_mix_bars",
    "answer_mix_vs_sweep",
    "extra_load_vs_sweep",
    "facet_groups",
    "frontier",
    "frontier_data",
    "latency_ccdf",
    "load_result",
    "metric_vs_sweep",
    "nda_axis_floor",
    "nda_bars",
    "nda_table",
    "policy_colors",
    "render",
    "tail_vs_sweep",
    "time_average_in_system",
    "traffic_over_time",
    "wilson_interval",
]
