"""Built-in coding methods, one per module; importing this package registers them all."""

from coin.methods import coin, distill, fisher, regmean, task_arithmetic, vanilla  # noqa: F401
