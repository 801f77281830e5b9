"""Built-in coding methods, one per module; importing this package registers them all."""

import coin.methods.aligned_coin as _aligned_coin  # noqa: F401  (registers aligned_coin and ot_fusion, issue 6)
from coin.methods import coin, distill, fisher, regmean, task_arithmetic, vanilla  # noqa: F401
