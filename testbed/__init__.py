"""A real serving testbed: one OS process per server doing real forward passes, a frontend replaying arrivals.

The simulator (`sim/`) predicts how a policy serves a stream of queries; this package serves the same stream
for real so the prediction can be checked. It knows nothing of the simulator: the caller hands it plain arrays
(arrival times, models, sample rows, straggler factors per (query, server)) and a `Policy` (what each server
hosts, how queries are dispatched, hedge delays), and gets back one record per query and one per task.

- `server`: a server process (``python -m testbed.server``) holding one network, its own FIFO queue and one
  CPU thread (or its CUDA device), reachable over ZeroMQ at a TCP address, so servers may live on other hosts.
- `frontend`: replays arrivals in wall-clock time, dispatches exactly as the simulator's policies do (direct,
  replica, hedge after a delay, coded redundant / hedged / sed, generalist backup), cancels leftover copies,
  decodes from the outputs that actually came back.
- `cluster`: starts and stops local server processes (clean on Ctrl-C: no orphans).

Times are milliseconds (`*_ms`) on the frontend's monotonic clock, zero at the first scheduled arrival.
"""

from testbed.cluster import LocalCluster, ServerSpec
from testbed.frontend import Policy, ServeResult, Workload, serve

__all__ = ["LocalCluster", "Policy", "ServeResult", "ServerSpec", "Workload", "serve"]
