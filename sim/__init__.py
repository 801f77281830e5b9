"""Discrete-event simulation of inference servers, stragglers, traffic and serving policies.

Knows nothing of torch: service times come in as distributions or arrays of measured times. Times are
milliseconds (`*_ms`), rates are queries per millisecond.

Public API
----------
- ``simulate(config, seed=0, *, policies=None, engine="fast") -> SimResult``: every policy of the config on
  the same random numbers (same arrivals, same per-(query, server) service and straggler draws).
  ``SimResult.records`` is one row per (policy, query): policy, query_id, kind (routed | ensemble), model
  (-1 = ensemble), model_name, sample_id, arrival_ms, finish_ms, latency_ms, answered_by (direct | replica |
  hedge | decoded | backup), servers_used ("0,2"), answer_mask (bit s for server s; int64 up to 63 servers,
  Python ints beyond), n_tasks, server_ms (cancelled and lost work included), warmup.
  ``SimResult.summary[policy]`` holds mean/p50/p95/p99/p999 ``*_ms`` with batch-means CIs (``*_ms_lo``,
  ``*_ms_hi``), server_ms_per_query and, in percent, utilization_pct (mean over servers),
  utilization_per_server_pct, extra_load_vs_uncoded_pct (server time per query against the uncoded policy's; None
  without one) and the answer mix direct_pct / replica_pct / hedge_pct / decoded_pct / backup_pct (shares of
  measured queries); with a hedge budget, hedges_denied_pct (measured queries whose hedge it held back).
  ``SimResult.servers`` is one row per (policy, server): hosts (an expert index, or "coded", "spare", "backup"),
  busy_ms, utilization_pct, cancelled_ms, lost_ms.
- ``simulate_each(config, seed=0, ...) -> (config, draws, iterator of PolicyRun)``: the same, one policy at a
  time as the iterator is consumed (input checked and draws made at the call), for callers that write each
  policy's records away instead of holding them all; ``compare_loads`` then sets extra_load_vs_uncoded_pct.
- ``replicate(config, seed, n_replications)``: CIs from independent replications.
- ``SimConfig`` (pydantic v2) / ``parse_config(mapping)`` / ``load_config(toml_path)``; bad input raises
  ``SimConfigError`` (a ValueError with a one-line message) before anything is simulated.
- ``draw(config, seed) -> Draws``: the common random numbers, exposed for tests and the runner.

Servers 0..N-1 host experts 0..N-1; servers N..N+r-1 are the policy's extra resources (idle spares for
uncoded, replicas, coded servers, or generalist backups), so every policy uses the same N + r servers.

Policies (``kind``, with its ``dispatch`` rules; each kind's rules live in ``policies/``, shared with the
testbed): ``uncoded`` (direct); ``replication`` (redundant | jsq | pool);
``hedged`` (hedged); ``coded`` (redundant | hedged | sed; answers may be decoded from N outputs); ``backup``
(hedged | redundant): each extra server hosts one generalist network (by default the coded model used as a
multi-task model, without decoding) that answers any query on its own — a routed query goes to its expert and
one backup server (the one with the fewest live tasks, ties to the lowest index; after ``delay_ms`` if hedged,
at once if redundant), an ensemble query to the N experts and one backup; the first answer wins and the other
copies are cancelled. A backup server's service time is ``service.backup`` (default: ``service.coded``).

Model semantics worth knowing: a task's time is drawn per (query, server) and is the same under every
policy; it is the draw of the server that starts the task (in a pooled queue, whichever server takes it);
a slow episode slows a task that *starts* inside it; a failure loses the work in service and the task
restarts with its server's draw after repair (nothing is dropped); hedge delays given as 'p95' are that
percentile of the primary's drawn task times; with service.max_batch > 1 a free server takes up to that
many queued tasks at once (batch time = max draw * (1 + batch_cost_per_extra * (b - 1))).

``deployment = {instances = k | [k_i], balancer = jsq | round_robin | power_of_d, d = 2, groups = [[...], ...]}``:
each expert on k_i servers in every policy (servers 0..N-1 their first instances, then the further ones, then the
extra servers); the balancer picks which instance gets a task; code groups split the experts into groups coded on
their own, r extra servers per group.

Physical options measured on the serving testbed (off by default; the reference engine refuses them):
``network = {out = DIST, back = DIST}`` delays each task on its way to the server and its output on the way
back (cancels travel like tasks; join-shortest-queue counts tasks in flight); ``service.cancel_in_service =
"finish_pass"`` lets a cancelled task's forward pass (its draw without the straggle factor) end before the server
moves on; ``service.cores = C`` makes the servers share C cores (processor sharing when more are busy);
``service.quantum_ms = q`` (only with cores) shares them the way an OS does instead: ceil(C) slots, k holders
each at speed min(1, C / k), given round robin to the servers with work for up to q ms of wall time each, so a
server that loses its slot waits whole quanta (q -> 0 gives processor sharing back);
``stragglers.hold = "stall"`` keeps a straggling task's extra time off those cores;
``service.wake = {idle_ms = [...], extra_ms = [...]}`` makes a task that starts on a server that sat idle for
g ms compute extra_ms(g) longer (a process that slept wakes to cold caches and a slower core);
``service.pass_correlation = {idle_ms = [...], rho = [...]}`` (empirical services only) makes a server's
consecutive passes move together: the normal score of a pass's rank is rho x its server's previous score +
sqrt(1 - rho^2) x its own, rho read from how long the server sat idle in between (0 beyond the last edge);
``service.dispatcher = {send_ms = a, return_ms = b}`` (with time slicing) runs the dispatcher's own CPU work on
those cores, a ms per task sent and b per output taken back, ahead of the servers (it preempts one when no core
is free), as a frontend at real-time priority does.

Minimal scenario (TOML, a [sim] table)::

    [sim]
    n_experts = 2
    r = 1
    n_queries = 100000
    policies = ["uncoded", {kind = "coded", dispatch = "sed"}, {kind = "hedged", delay_ms = "p95"}]
    [sim.traffic]
    kind = "markov_hot"      # poisson | markov_hot | smooth | trace
    rate_per_ms = 1.5
    strength = 0.7
    [sim.service.expert]
    kind = "shifted_exponential"
    shift_ms = 0.5
    mean_ms = 0.5
    [sim.stragglers]
    p = 0.05
    slowdown = 5.0
"""

import accel  # noqa: F401  (first: whether the compiled engine runs is decided before its modules load)
from sim.api import PolicyRun, SimResult, compare_loads, replicate, simulate, simulate_each
from sim.config import (
    Deterministic,
    Empirical,
    Episodes,
    Exponential,
    Failures,
    LogNormal,
    Pareto,
    PolicySpec,
    Service,
    ShiftedExponential,
    SimConfig,
    Stragglers,
    Traffic,
)
from sim.draws import Draws, draw
from sim.errors import SimConfigError
from sim.parse import load_config, parse_config

__all__ = [
    "Deterministic",
    "Draws",
    "Empirical",
    "Episodes",
    "Exponential",
    "Failures",
    "LogNormal",
    "Pareto",
    "PolicyRun",
    "PolicySpec",
    "Service",
    "ShiftedExponential",
    "SimConfig",
    "SimConfigError",
    "SimResult",
    "Stragglers",
    "Traffic",
    "compare_loads",
    "draw",
    "load_config",
    "parse_config",
    "replicate",
    "simulate",
    "simulate_each",
]
