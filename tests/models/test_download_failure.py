"""A data-set download that fails leaves no folders or partial files behind, and is one DataError line."""

from __future__ import annotations

import pytest

from models import data


class _FailingMNIST:
    """Stands in for torchvision's MNIST: makes its folders and a partial archive, then the network fails."""

    def __init__(self, root: str, train: bool, download: bool) -> None:
        raw = data.Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "train-images-idx3-ubyte.gz.part").write_bytes(b"\x1f\x8b partial")
        raise OSError("[Errno 101] Network is unreachable")


def test_failed_mnist_download_removes_the_root_it_created(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd, "MNIST", _FailingMNIST)
    root = tmp_path / "new-data-root"
    with pytest.raises(data.DataError, match="Network is unreachable"):
        data.load_torchvision_mnist("mnist", root, download=True)
    assert not root.exists()


def test_failed_cifar_download_keeps_an_existing_root_but_nothing_it_wrote(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    root = tmp_path / "data"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "keep.txt").write_text("user file")

    def failing_download(url: str, folder: str) -> None:
        (data.Path(folder) / "cifar-10-python.tar.gz").write_bytes(b"half an archive")
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(tvu, "download_url", failing_download)
    with pytest.raises(data.DataError, match="connection reset"):
        data.load_cifar10(root, download=True)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["mine", "mine/keep.txt"]
