"""One inference server: a network, its own FIFO queue, one CPU thread (or its CUDA device), a ZeroMQ address.

Run as ``python -m testbed.server --bind tcp://127.0.0.1:5601 --network DIR/net-0 --network DIR/net-1 ...
--inputs DIR/inputs.npy`` (a network folder holds ``network.json`` — the models.NetworkSpec — and
``weights.safetensors``). Each server holds every network a policy may give it (an expert, its replica or a
coded model); each task names the one to run. It can run on another host: the frontend only needs its address,
and the server the same folders.

A parity task (``GROUP`` frame) names several input rows and an encoder: the rows are encoded into one input
(coin.parity's encoders: their sum, or their tiles side by side) and the named network — a parity network — runs on
that; it is queued, straggled and cancelled like any task.

Serving one task: the forward pass on the task's input row runs to completion (a pass cannot be interrupted);
then a straggling task (factor f > 1) is held for (f − 1) × that pass's compute time, either idle (``stall``:
like a network or I/O stall) or running further passes (``compute``: like a noisy neighbour). A cancel that
arrives while the task is queued drops it; one that arrives in service cuts the straggle at once (after the
current pass in compute mode), never the first pass.
"""

from __future__ import annotations

import argparse
import hmac
import json
import math
import os
import signal
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from testbed import wire


@dataclass
class _Task:
    ident: bytes
    task_id: int
    net: int
    row: int
    factor: float
    mode: int
    recv: float
    rows: tuple[int, ...] = ()  # a parity task: the input rows it encodes (then `row` is unused) ...
    places: int = 0  # ... in this many places, the rest zero (a partial group)
    encoder: int = 0  # ... and how (an index into wire.ENCODERS)


def load_network(folder: Path, device: str):
    """The network saved in `folder` (network.json: models.given_config.network_recipe; weights.safetensors), in eval
    mode on `device`."""
    import torch
    from safetensors.torch import load_file

    from models.given_config import rebuild_network

    model = rebuild_network((folder / "network.json").read_text())  # the zoo's networks or the user's own
    model.load_state_dict(load_file(str(folder / "weights.safetensors")), strict=True)
    return model.to(torch.device(device)).eval()


class Server:
    """The serving loop; single-threaded, so a task's stamps are not disturbed by a second Python thread."""

    def __init__(self, socket: zmq.Socket, models: list, inputs, device: str, token: bytes | None = None) -> None:
        import torch

        self.socket, self.models, self.inputs, self.device = socket, models, inputs, torch.device(device)
        self.token = token  # a STOP must carry it; None: STOP frames are ignored (SIGTERM stops the server)
        self.queue: deque[_Task] = deque()
        self.cancelled: set[int] = set()
        self.live: set[int] = set()  # queued or in service
        self.running = True
        self.parent = os.getppid()
        self._torch = torch

    def _input(self, task: _Task):
        """The task's input: its row, or a parity task's rows encoded into one."""
        if not task.rows:
            return self.inputs[task.row : task.row + 1]
        from coin.parity import ENCODERS

        xs = self.inputs.new_zeros((task.places, 1, *self.inputs.shape[1:]))  # (k, 1, ...)
        xs[: len(task.rows), 0] = self.inputs[list(task.rows)]
        return ENCODERS[wire.ENCODERS[task.encoder]](xs)

    def _forward(self, task: _Task) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            out = self.models[task.net](self._input(task).to(self.device, non_blocking=True))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return out[0].float().cpu().numpy()

    def _read(self, timeout_s: float | None) -> None:
        """Take every waiting message (blocking up to `timeout_s` for the first)."""
        if not wire.wait_readable([self.socket], timeout_s):
            return
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(frames, time.perf_counter())

    def _handle(self, frames: list[bytes], now: float) -> None:
        if len(frames) < 2:
            return  # not even a kind: nobody to answer
        ident = frames[0]
        try:
            self._act(ident, frames[1], frames[2:], now)
        except (ValueError, struct.error) as error:  # a malformed frame: say so, keep serving
            self.socket.send_multipart([ident, wire.ERROR, str(error).encode()[:500]])

    def _check(self, task: _Task) -> None:
        """Refuse a task this server cannot run (ValueError: the frontend gets one ERROR frame)."""
        tid = task.task_id
        if not 0 <= task.net < len(self.models):
            raise ValueError(f"task {tid}: network {task.net} out of range (this server holds {len(self.models)})")
        for row in task.rows or (task.row,):
            if not 0 <= row < len(self.inputs):
                raise ValueError(f"task {tid}: input row {row} out of range (0..{len(self.inputs) - 1})")
        if not (math.isfinite(task.factor) and 1.0 <= task.factor <= wire.MAX_FACTOR):
            raise ValueError(f"task {tid}: straggle factor {task.factor!r} is not in [1, {wire.MAX_FACTOR:g}]")
        if task.mode not in (wire.MODE_STALL, wire.MODE_COMPUTE):
            raise ValueError(f"task {tid}: unknown straggle mode {task.mode}")
        if tid in self.live:
            raise ValueError(f"task {tid} is already queued or in service")

    def _act(self, ident: bytes, kind: bytes, body: list[bytes], now: float) -> None:
        if kind in (wire.TASK, wire.GROUP) and len(body) == (1 if kind == wire.TASK else 2):
            if kind == wire.TASK:
                task_id, net, row, factor, mode = wire.TASK_FMT.unpack(body[0])
                task = _Task(ident, task_id, net, row, factor, mode, now)
            else:
                task_id, net, factor, mode, encoder, places, n = wire.GROUP_FMT.unpack(body[0])
                if not (0 <= encoder < len(wire.ENCODERS) and 1 <= n <= places <= wire.MAX_GROUP):
                    raise ValueError(f"task {task_id}: a parity task needs 1..{wire.MAX_GROUP} places, rows for at "
                                     f"most all of them and an encoder of {wire.ENCODERS} (got {n} rows in {places} "
                                     f"places, encoder {encoder})")
                if len(body[1]) != 8 * n:
                    raise ValueError(f"task {task_id}: {n} rows announced, {len(body[1]) // 8} sent")
                rows = struct.unpack(f"<{n}q", body[1])
                task = _Task(ident, task_id, net, -1, factor, mode, now, rows, places, encoder)
            self._check(task)
            self.queue.append(task)
            self.live.add(task_id)
        elif kind == wire.CANCEL and len(body) == 1:
            task_id = wire.ID_FMT.unpack(body[0])[0]
            if task_id in self.live:  # a cancel for a task already answered is moot
                self.cancelled.add(task_id)
        elif kind == wire.PING and not body:
            facts = {"pid": os.getpid(), "device": str(self.device), "threads": self._torch.get_num_threads(),
                     "rows": len(self.inputs), "networks": len(self.models)}
            self.socket.send_multipart([ident, wire.PONG, json.dumps(facts).encode()])
        elif kind == wire.STOP:
            if self.token is not None and len(body) == 1 and hmac.compare_digest(body[0], self.token):
                self.running = False
            else:
                raise ValueError("STOP refused: it does not carry this server's token")
        else:
            raise ValueError(f"unknown frame: kind {kind[:8]!r} with {len(body)} body frame(s)")

    def _drop(self, task: _Task, status: int, start: float, computed: float, passes: int) -> None:
        self.cancelled.discard(task.task_id)
        self.live.discard(task.task_id)
        body = wire.DROPPED_FMT.pack(task.task_id, status, task.recv, start, computed, time.perf_counter(), passes)
        self.socket.send_multipart([task.ident, wire.DROPPED, body])

    def _serve(self, task: _Task) -> None:
        start = time.perf_counter()
        out = self._forward(task)
        computed = time.perf_counter()
        passes = 1
        hold_until = computed + (task.factor - 1.0) * (computed - start)
        while True:
            self._read(0)
            if task.task_id in self.cancelled or not self.running:  # cancelled, or told to stop: cut the straggle
                self._drop(task, wire.DROPPED_IN_SERVICE, start, computed, passes)
                return
            now = time.perf_counter()
            if now >= hold_until:
                break
            if task.mode == wire.MODE_COMPUTE:
                self._forward(task)
                passes += 1
            else:
                self._read(hold_until - now)
        self.live.discard(task.task_id)
        body = wire.DONE_FMT.pack(task.task_id, task.recv, start, computed, time.perf_counter(), passes)
        self.socket.send_multipart([task.ident, wire.DONE, body, out.astype(np.float32).tobytes()])

    def run(self) -> None:
        while self.running:
            if not self.queue:
                self._read(1.0)
                if os.getppid() != self.parent:  # the frontend died without stopping us: do not linger
                    return
                continue
            task = self.queue.popleft()
            if task.task_id in self.cancelled:
                self._drop(task, wire.DROPPED_QUEUED, float("nan"), float("nan"), 0)
                continue
            self._serve(task)
            self._read(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.server", description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True,
                        help="ZeroMQ address to listen on, e.g. tcp://127.0.0.1:5601 (port * = any free port)")
    parser.add_argument("--network", required=True, type=Path, action="append",
                        help="folder with network.json + weights.safetensors; repeat for several (task field net)")
    parser.add_argument("--inputs", required=True, type=Path, help=".npy of the input rows tasks refer to")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (one core per server)")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU core where the OS allows")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the frontend owns Ctrl-C and stops us with STOP / SIGTERM
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {args.cpu})
        except OSError as error:
            print(f"warning: cannot pin to CPU {args.cpu}: {error}", file=sys.stderr)
    import torch

    torch.set_num_threads(args.threads)
    inputs = torch.from_numpy(np.load(args.inputs))
    models = [load_network(folder, args.device) for folder in args.network]
    for _ in range(20):  # warm-up: allocator, kernel choice
        with torch.no_grad():
            for model in models:
                model(inputs[:1].to(args.device))
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind(args.bind)
    print(socket.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)  # the port, when --bind asked for any (`*`)
    try:
        token = os.environ.pop(wire.TOKEN_ENV, "").encode() or None
        Server(socket, models, inputs, args.device, token).run()
    finally:
        socket.close(0)
        context.term()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
