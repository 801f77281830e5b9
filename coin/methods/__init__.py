"""Built-in coding methods, one per module, and the table that names them (`METHODS`, read by coin.registry).

Besides the paper's methods: ``ties`` and ``dare`` (task-vector merges), ``learned`` (a coded model trained on
the experts' whole training pools, the trained alternative; it sets ``training_pools``) and ``ensemble``, the exact
Σβᵢfᵢ from running every expert — the ceiling row of an NDA table, not a deployable coded model. A method is a function
``fn(task, **options) -> EncodeResult``; adding one is a module here and a line in `METHODS`.
"""

from coin.methods.aligned_coin import aligned_coin
from coin.methods.coin import coin
from coin.methods.dare import dare
from coin.methods.distill import distill
from coin.methods.ensemble import ensemble
from coin.methods.fisher import fisher
from coin.methods.learned import learned
from coin.methods.ot_fusion import ot_fusion
from coin.methods.regmean import regmean
from coin.methods.task_arithmetic import task_arithmetic
from coin.methods.ties import ties
from coin.methods.vanilla import vanilla

METHODS = {
    "coin": coin,
    "ot_fusion": ot_fusion,
    "aligned_coin": aligned_coin,
    "dare": dare,
    "distill": distill,
    "ensemble": ensemble,
    "fisher": fisher,
    "learned": learned,
    "regmean": regmean,
    "task_arithmetic": task_arithmetic,
    "ties": ties,
    "vanilla": vanilla,
}
