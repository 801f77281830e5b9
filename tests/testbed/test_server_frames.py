"""A testbed server trusts no frame: whatever reaches its socket, it answers a frame it cannot act on with an
ERROR reply and goes on serving; STOP is honoured only with the token its own cluster started it with."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq
from safetensors.torch import save_file

from models.networks import NetworkSpec, build_network
from testbed import LocalCluster, ServerSpec, wire

SPEC = NetworkSpec(arch="cnn", in_channels=1, image_size=28, width=2)
# protocol only, no timing asserted: the servers run beside the other test process (tests/conftest.py)
pytestmark = pytest.mark.timing_free

ROWS = 12


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    folder = root / "net"
    folder.mkdir()
    torch.manual_seed(0)
    net = build_network(SPEC).eval()
    (folder / "network.json").write_text(SPEC.model_dump_json())
    save_file(net.state_dict(), str(folder / "weights.safetensors"))
    x = np.random.default_rng(1).standard_normal((ROWS, 1, 28, 28)).astype(np.float32)
    np.save(root / "inputs.npy", x)
    with LocalCluster([ServerSpec((folder,))], root / "inputs.npy") as cluster:
        stranger = cluster.context.socket(zmq.DEALER)  # any other local client of the same port
        stranger.setsockopt(zmq.LINGER, 0)
        stranger.connect(cluster.addresses[0])
        yield cluster, stranger, net, x
        stranger.close(0)


def _reply(sock: zmq.Socket, timeout_s: float = 5.0) -> list[bytes]:
    deadline = time.monotonic() + timeout_s
    while not wire.wait_readable([sock], deadline - time.monotonic()):  # it may wake early, with nothing to read
        assert time.monotonic() < deadline, "no reply: the server is stuck or dead"
    return sock.recv_multipart()


def _task(task_id: int, net: int = 0, row: int = 0, factor: float = 1.0, mode: int = wire.MODE_STALL) -> bytes:
    return wire.TASK_FMT.pack(task_id, net, row, factor, mode)


def _group(task_id: int, rows: list[int], net: int = 0, encoder: int = 0, n: int | None = None,
           places: int | None = None) -> list[bytes]:
    head = wire.GROUP_FMT.pack(task_id, net, 1.0, wire.MODE_STALL, encoder, len(rows) if places is None else places,
                               len(rows) if n is None else n)
    return [wire.GROUP, head, np.asarray(rows, "<i8").tobytes()]


def _still_serves(cluster: LocalCluster, net: torch.nn.Module, x: np.ndarray, task_id: int, row: int) -> None:
    sock = cluster.sockets[0]
    sock.send_multipart([wire.TASK, _task(task_id, row=row)])
    kind, stamps, out = _reply(sock)
    assert kind == wire.DONE and wire.DONE_FMT.unpack(stamps)[0] == task_id
    with torch.no_grad():
        expected = net(torch.from_numpy(x[row : row + 1]))[0].numpy()
    np.testing.assert_allclose(np.frombuffer(out, np.float32), expected, rtol=1e-5, atol=1e-6)
    assert cluster.processes[0].poll() is None


BAD = {
    "unknown kind": [b"Z"],
    "task without a body": [wire.TASK],
    "task body too short": [wire.TASK, b"\x00" * 5],
    "task body too long": [wire.TASK, _task(1) + b"\x00"],
    "network out of range": [wire.TASK, _task(2, net=3)],
    "negative row": [wire.TASK, _task(3, row=-1)],
    "row past the inputs": [wire.TASK, _task(4, row=ROWS)],
    "NaN factor": [wire.TASK, _task(5, factor=math.nan)],
    "infinite factor": [wire.TASK, _task(6, factor=math.inf)],
    "huge factor": [wire.TASK, _task(7, factor=1e300)],
    "factor below one": [wire.TASK, _task(8, factor=0.5)],
    "unknown mode": [wire.TASK, _task(9, mode=7)],
    "group without its rows": _group(10, [1, 2])[:2],
    "group announcing more rows than sent": _group(11, [1, 2], n=3),
    "group row past the inputs": _group(12, [1, ROWS]),
    "group with a negative row": _group(13, [-1, 2]),
    "group with no rows": _group(14, []),
    "group with too many rows": _group(15, [0] * (wire.MAX_GROUP + 1)),
    "group with more rows than places": _group(18, [1, 2, 3], places=2),
    "group with an unknown encoder": _group(16, [1, 2], encoder=len(wire.ENCODERS)),
    "group network out of range": _group(17, [1, 2], net=1),
    "cancel without an id": [wire.CANCEL],
    "cancel id of the wrong size": [wire.CANCEL, b"\x01\x02"],
    "ping with a body": [wire.PING, b"x"],
    "stop without the token": [wire.STOP],
    "stop with a wrong token": [wire.STOP, b"0" * 32],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_malformed_frame_gets_an_error_reply_and_the_server_goes_on(served, case: str) -> None:
    cluster, stranger, net, x = served
    stranger.send_multipart(BAD[case])
    kind, text = _reply(stranger)
    assert kind == wire.ERROR and text, (kind, text)
    if case in ("group with no rows", "group with too many rows", "group with more rows than places",
                "group with an unknown encoder"):
        assert b"places" in text, text  # the group's shape is what is wrong, and the reply says so
    _still_serves(cluster, net, x, 1000 + sorted(BAD).index(case), row=3)


def test_fuzzed_frames_never_stop_the_server(served) -> None:
    """300 random frames (random kinds, sizes and bytes): every one that is not a well-formed CANCEL or PING gets
    an ERROR; afterwards the server serves the right output for a real task."""
    cluster, stranger, net, x = served
    rng = np.random.default_rng(7)
    kinds = [wire.TASK, wire.GROUP, wire.CANCEL, wire.PING, wire.STOP, b"Q", b""]
    errors = 0
    for _ in range(300):
        kind = kinds[rng.integers(len(kinds))]
        body = [rng.bytes(int(rng.integers(0, 40))) for _ in range(int(rng.integers(0, 3)))]
        stranger.send_multipart([kind, *body])
        silent = (kind == wire.CANCEL and len(body) == 1 and len(body[0]) == wire.ID_FMT.size)
        if kind == wire.PING and not body:
            assert _reply(stranger)[0] == wire.PONG
        elif not silent:
            assert _reply(stranger)[0] == wire.ERROR
            errors += 1
    assert errors > 200
    _still_serves(cluster, net, x, 5000, row=ROWS - 1)


def test_a_duplicate_task_id_is_refused_not_served_twice(served) -> None:
    cluster, stranger, net, x = served
    stranger.send_multipart([wire.TASK, _task(7000, factor=1e5)])  # held seconds: still live when the copy comes
    time.sleep(0.05)
    stranger.send_multipart([wire.TASK, _task(7000)])
    assert _reply(stranger)[0] == wire.ERROR
    stranger.send_multipart([wire.CANCEL, wire.ID_FMT.pack(7000)])
    kind, body = _reply(stranger)
    assert kind == wire.DROPPED and wire.DROPPED_FMT.unpack(body)[:2] == (7000, wire.DROPPED_IN_SERVICE)


def test_stop_needs_the_token_and_cuts_a_straggle(tmp_path: Path, served) -> None:
    """The cluster's own STOP (with its token) ends a server even while it holds the longest straggle a task may
    ask for: the task is dropped in service and the process exits without a signal."""
    _, _, net, x = served
    folder = tmp_path / "net"
    folder.mkdir()
    (folder / "network.json").write_text(SPEC.model_dump_json())
    save_file(net.state_dict(), str(folder / "weights.safetensors"))
    np.save(tmp_path / "inputs.npy", x)
    cluster = LocalCluster([ServerSpec((folder,))], tmp_path / "inputs.npy").__enter__()
    try:
        sock = cluster.sockets[0]
        sock.send_multipart([wire.TASK, _task(1, factor=wire.MAX_FACTOR)])
        time.sleep(0.2)
        sock.send_multipart([wire.STOP])  # no token: refused, the straggle goes on
        assert _reply(sock)[0] == wire.ERROR
        sock.send_multipart([wire.STOP, cluster.token])
        kind, body = _reply(sock)
        assert kind == wire.DROPPED and wire.DROPPED_FMT.unpack(body)[:2] == (1, wire.DROPPED_IN_SERVICE)
        assert cluster.processes[0].wait(timeout=5) == 0
    finally:
        cluster.close()


def test_a_probe_reaches_running_servers_and_names_what_is_not_one(served):
    from testbed.cluster import TestbedError, probe

    cluster, _, _, _ = served
    (facts,) = probe(cluster.addresses)
    assert facts["address"] == cluster.addresses[0] and facts["pid"] == cluster.pids[0]
    # a ZeroMQ peer that answers, but not with a PONG and its facts
    context = zmq.Context()
    impostor = context.socket(zmq.ROUTER)
    port = impostor.bind_to_random_port("tcp://127.0.0.1")
    try:
        import threading

        def answer_wrongly() -> None:
            if impostor.poll(5000):
                ident, *_ = impostor.recv_multipart()
                impostor.send_multipart([ident, b"hello"])

        thread = threading.Thread(target=answer_wrongly)
        thread.start()
        with pytest.raises(TestbedError, match="not as a coinsim testbed server"):
            probe([f"tcp://127.0.0.1:{port}"], timeout_s=5.0)
        thread.join()
    finally:
        impostor.close(0)
        context.term()


@pytest.mark.parametrize("encoder, rows, places", [("sum", [1, 4, 7], 3), ("sum", [5], 2), ("concat", [0, 3, 6, 9], 4),
                                                   ("concat", [2, 8], 2), ("concat", [2, 8], 4)])
def test_a_parity_task_runs_the_network_on_its_rows_encoded(served, encoder: str, rows: list[int], places: int
                                                            ) -> None:
    """The encoded input is rebuilt here without coin.parity: the rows' sum; or, in 4 places, each row averaged
    over 2×2 pixel blocks into one quadrant of a 28×28 input (row-major, the empty ones zero), in 2 places over 2×1
    blocks into the top and bottom halves."""
    cluster, _, net, x = served
    sock = cluster.sockets[0]
    task_id = 8000 + 10 * len(rows) + places
    sock.send_multipart(_group(task_id, rows, encoder=wire.ENCODERS.index(encoder), places=places))
    kind, stamps, out = _reply(sock)
    assert kind == wire.DONE and wire.DONE_FMT.unpack(stamps)[0] == task_id
    if encoder == "sum":
        encoded = x[rows].sum(0, keepdims=True)
    else:
        encoded = np.zeros((1, 1, 28, 28), np.float32)
        for j, row in enumerate(rows):
            if places == 4:
                r, c = divmod(j, 2)
                encoded[0, 0, 14 * r:14 * (r + 1), 14 * c:14 * (c + 1)] = x[row, 0].reshape(14, 2, 14, 2).mean((1, 3))
            else:
                encoded[0, 0, 14 * j:14 * (j + 1), :] = x[row, 0].reshape(14, 2, 28).mean(1)
    with torch.no_grad():
        expected = net(torch.from_numpy(encoded))[0].numpy()
    np.testing.assert_allclose(np.frombuffer(out, np.float32), expected, rtol=1e-4, atol=1e-5)
