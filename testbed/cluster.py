"""Start, reach and stop a set of testbed servers.

`LocalCluster` starts one ``python -m testbed.server`` process per server on this host (each on a free port)
and waits until every one answers a ping; leaving the `with` block (normally, on an error or on Ctrl-C) stops
them all — STOP, then SIGTERM, then SIGKILL — so no process outlives the run. Servers on other hosts are given
by address instead (`addresses=`) and are left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from testbed import wire

SERVER_PROCESS_BYTES = 300 * 2**20  # a floor of what one more local server process holds of its own (torch loaded):
# 315 MiB of private memory (USS) measured for each of three such processes side by side, 576 MiB resident


class TestbedError(RuntimeError):
    """A server that could not be started or reached (one line for the user)."""


@dataclass(frozen=True)
class ServerSpec:
    """What one server holds: saved network folders (network.json + weights.safetensors), in task-`net` order."""

    networks: tuple[Path, ...]
    cpu: int | None = None


class LocalCluster:
    """Server processes on this host, or remote addresses; `sockets[s]` is the frontend's line to server s."""

    def __init__(self, servers: list[ServerSpec], inputs: Path, device: str = "cpu", threads: int = 1,
                 addresses: list[str] | None = None, start_timeout_s: float = 120.0) -> None:
        self.servers, self.inputs, self.device, self.threads = servers, inputs, device, threads
        self.addresses = list(addresses) if addresses else []
        self.start_timeout_s = start_timeout_s
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Any] = []
        self.context: zmq.Context | None = None
        self.sockets: list[zmq.Socket] = []
        self.facts: list[dict[str, Any]] = []
        self.token = secrets.token_hex(16).encode()  # STOP is honoured only with it (servers started here)

    def __enter__(self) -> LocalCluster:
        try:
            if not self.addresses:
                self._start_local()
            self._connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def _start_local(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads),
                   **{wire.TOKEN_ENV: self.token.decode()})
        for spec in self.servers:
            cmd = [sys.executable, "-m", "testbed.server", "--bind", "tcp://127.0.0.1:*", "--inputs",
                   str(self.inputs), "--device", self.device, "--threads", str(self.threads)]
            for folder in spec.networks:
                cmd += ["--network", str(folder)]
            if spec.cpu is not None:
                cmd += ["--cpu", str(spec.cpu)]
            log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server must never block
            self.logs.append(log)
            self.processes.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env, text=True))
        deadline = time.monotonic() + self.start_timeout_s
        for s, proc in enumerate(self.processes):
            line = _read_line(proc, deadline)
            if not line.startswith("tcp://"):
                self.logs[s].seek(0)
                err = self.logs[s].read()
                last = (err.strip().splitlines() or ["no output"])[-1]
                raise TestbedError(f"testbed server {s} did not start: {last}")
            self.addresses.append(line.strip())

    def _connect(self) -> None:
        self.context = zmq.Context()
        deadline = time.monotonic() + self.start_timeout_s
        for s, address in enumerate(self.addresses):
            sock = _dealer(self.context, address)
            self.sockets.append(sock)
            self.facts.append(_ping(sock, s, address, deadline, self.start_timeout_s))

    def close(self) -> None:
        for sock in self.sockets:
            try:
                if self.processes:
                    sock.send_multipart([wire.STOP, self.token], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            sock.close(linger=100)  # long enough for STOP to leave, so a server ends on its own
        self.sockets = []
        if self.context is not None:
            self.context.term()
            self.context = None
        _stop_all(self.processes)
        self.processes = []
        for log in self.logs:
            log.close()
        self.logs = []


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder named after this process (`<prefix><pid>-…`), removed on leaving; first removes the
    folders of earlier runs whose process is gone (a frontend killed with SIGKILL cannot clean up after itself)."""
    root = Path(tempfile.gettempdir())
    for stale in root.glob(f"{prefix}*"):
        pid = stale.name[len(prefix):].split("-")[0]
        if stale.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to clean
        return True
    return True


def _dealer(context: zmq.Context, address: str) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    try:
        sock.connect(address)
    except zmq.ZMQError as error:
        sock.close()
        raise TestbedError(f"testbed server address '{address}' cannot be used: {error}") from None
    return sock


def _ping(sock: zmq.Socket, s: int, address: str, deadline: float, timeout_s: float) -> dict[str, Any]:
    """PING server `s` and return the facts it answers with (its networks, device, threads)."""
    sock.send_multipart([wire.PING])
    while True:  # the socket's descriptor can wake without a whole message: wait again until the deadline
        if wire.wait_readable([sock], max(0.0, deadline - time.monotonic())):
            frames = sock.recv_multipart()
            break
        if time.monotonic() >= deadline:
            raise TestbedError(f"testbed server {s} at {address} did not answer within {timeout_s:g} s")
    try:
        facts = json.loads(frames[1]) if len(frames) == 2 and frames[0] == wire.PONG else None
    except (ValueError, UnicodeDecodeError):
        facts = None
    if not isinstance(facts, dict):
        raise TestbedError(f"testbed server {s} at {address} answered, but not as a coinsim testbed server")
    return facts | {"address": address}


def probe(addresses: list[str], timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Ping servers that run elsewhere, before any work: the facts each answers with, or a TestbedError naming
    the first that cannot be reached within `timeout_s` seconds."""
    context = zmq.Context()
    sockets: list[zmq.Socket] = []
    try:
        facts = []
        for s, address in enumerate(addresses):
            sockets.append(_dealer(context, address))
            facts.append(_ping(sockets[-1], s, address, time.monotonic() + timeout_s, timeout_s))
        return facts
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()


def _read_line(proc: subprocess.Popen, deadline: float) -> str:
    import select

    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            return proc.stdout.readline()
        if proc.poll() is not None:
            return ""
    return ""


def _stop_all(procs: list[subprocess.Popen]) -> None:
    """Stop every server together: 2 s in all to end on STOP, then SIGTERM to the rest and 3 s in all, then
    SIGKILL — one deadline for all, so stopping N servers takes no longer than stopping one."""
    for signal_rest, grace_s in ((None, 2.0), ("terminate", 3.0), ("kill", None)):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        for proc in alive:
            if signal_rest is not None:
                getattr(proc, signal_rest)()
        deadline = None if grace_s is None else time.monotonic() + grace_s
        for proc in alive:
            try:
                proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
