"""The frames servers and the frontend exchange over ZeroMQ, and a select()-based wait with µs resolution.

Frontend → server (the server's ROUTER socket prefixes the sender's identity):
  ``[TASK, <task_id q, net H, row q, factor d, mode B>]``  run network `net` on input `row`; straggle by
                                                    `factor` (1 = no straggle)
  ``[GROUP, <task_id q, net H, factor d, mode B, encoder B, places H, n H>, <rows q×n>]``  a parity task:
                                                    the n input rows fill the first n of `places` (the rest
                                                    zero), encoded into one input (`ENCODERS[encoder]`: their
                                                    sum, or their tiles side by side) that `net` runs on
  ``[CANCEL, <task_id q>]``                          drop the task if queued, cut its straggle if in service
  ``[PING]`` → ``[PONG, json]``                      readiness and facts (pid, device, network, threads)
  ``[STOP, token]``                                  cut the task in hand's straggle, then exit — honoured only
                                                    with the token the server was started with (its
                                                    ``COINSIM_SERVER_TOKEN``); a server started without one
                                                    stops on SIGTERM only
Server → frontend:
  ``[DONE, <task_id q, recv, start, computed, end d×4, passes I>, float32 output bytes]``
  ``[DROPPED, <task_id q, status B, recv, start, computed, end d×4, passes I>]`` (queued or in service)
  ``[ERROR, utf-8 text]``                           a frame the server cannot act on (unknown kind, wrong size,
                                                    network or row out of range, a factor that is not a finite
                                                    number in [1, MAX_FACTOR]); the server keeps serving

Every task gets exactly one DONE or DROPPED, so the frontend knows when all work has drained. Server stamps are
`time.perf_counter()` seconds on the server's host: only their differences (queue wait, compute, straggle) are
used unless the caller knows both ends share a clock.
"""

from __future__ import annotations

import select
import struct

import zmq

TASK, CANCEL, PING, PONG, STOP, DONE, DROPPED, ERROR = b"T", b"C", b"P", b"p", b"S", b"D", b"X", b"E"
GROUP = b"G"
TOKEN_ENV = "COINSIM_SERVER_TOKEN"  # where a server finds the token a STOP must carry
MAX_FACTOR = 1e6  # the largest straggle factor a task may ask for
MODE_STALL, MODE_COMPUTE = 0, 1
MODES = {"stall": MODE_STALL, "compute": MODE_COMPUTE}
DROPPED_QUEUED, DROPPED_IN_SERVICE = 1, 2

TASK_FMT = struct.Struct("<qHqdB")
GROUP_FMT = struct.Struct("<qHdBBHH")
ENCODERS = ("sum", "concat")  # a GROUP frame's encoder byte indexes this (coin.parity.ENCODERS names them)
MAX_GROUP = 64  # the most input rows one parity task may encode
ID_FMT = struct.Struct("<q")
DONE_FMT = struct.Struct("<qddddI")
DROPPED_FMT = struct.Struct("<qBddddI")


def wait_readable(sockets: list[zmq.Socket], timeout_s: float | None) -> bool:
    """Block until one of `sockets` has a message or `timeout_s` passes (None: forever); True if readable.

    ZeroMQ's file descriptor is edge-triggered, so the socket's own POLLIN flag is checked before and after
    waiting on it; select() takes a float timeout, unlike zmq_poll's whole milliseconds.
    """
    if any(s.getsockopt(zmq.EVENTS) & zmq.POLLIN for s in sockets):
        return True
    if timeout_s is not None and timeout_s <= 0:
        return False
    fds = [s.getsockopt(zmq.FD) for s in sockets]
    select.select(fds, [], [], timeout_s)
    return any(s.getsockopt(zmq.EVENTS) & zmq.POLLIN for s in sockets)
