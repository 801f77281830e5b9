"""Built-in coding methods, one per module; importing this package registers them all.

Besides the paper's methods: ``ties`` and ``dare`` (task-vector merges, issue 10) and ``ensemble``, the exact
Σβᵢfᵢ from running every expert — the ceiling row of an NDA table, not a deployable coded model."""

import coin.methods.aligned_coin as _aligned_coin  # noqa: F401  (registers aligned_coin and ot_fusion, issue 6)
from coin.methods import coin, dare, distill, ensemble, fisher, regmean, task_arithmetic, ties, vanilla  # noqa: F401
