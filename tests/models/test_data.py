import gzip
import pickle

import numpy as np
import pytest
import torch

from models.data import (
    DataError,
    adapt_images,
    load_dataset,
    select_labels,
    stratified_split,
    write_idx,
)


def test_stratified_split_is_deterministic_disjoint_and_complete():
    labels = np.repeat(np.arange(10), 37)
    a_train, a_test = stratified_split(labels, 0.2, seed=3)
    b_train, b_test = stratified_split(labels, 0.2, seed=3)
    c_train, _ = stratified_split(labels, 0.2, seed=4)
    assert np.array_equal(a_train, b_train) and np.array_equal(a_test, b_test)
    assert not np.array_equal(a_train, c_train)
    assert not set(a_train) & set(a_test)
    assert sorted(np.concatenate([a_train, a_test])) == list(range(len(labels)))
    # every class keeps its 20% share in test
    assert all((labels[a_test] == k).sum() == 7 for k in range(10))


def test_mnist5k_embedded_split():
    data = load_dataset("mnist5k", seed=0)
    assert data.train_x.shape == (4000, 1, 28, 28) and data.test_x.shape == (1000, 1, 28, 28)
    assert data.train_x.min() >= -1 and data.train_x.max() <= 1
    assert torch.bincount(data.test_y).tolist() == [100] * 10
    again = load_dataset("MNIST-5k", seed=0)
    assert data.fingerprint == again.fingerprint
    assert load_dataset("mnist5k", seed=1).fingerprint != data.fingerprint


def test_digits_are_upsampled_to_mnist_geometry():
    data = load_dataset("digits")
    assert data.train_x.shape[1:] == (1, 28, 28)
    assert len(data.train_x) + len(data.test_x) == 1797
    assert data.num_classes == 10


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", root=tmp_path / "absent")
    with pytest.raises(DataError, match="needs a data root"):
        load_dataset("cifar10")


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_torchvision_idx_files_are_read(tmp_path, name, folder):
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    sizes = {"train": 30, "t10k": 12}
    expected = {}
    for split, n in sizes.items():
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
        expected[split] = (images, labels)
    data = load_dataset(name, root=tmp_path)
    assert data.train_x.shape == (30, 1, 28, 28) and data.test_x.shape == (12, 1, 28, 28)
    assert data.train_y.tolist() == expected["train"][1].tolist()
    restored = ((data.test_x[:, 0] + 1) / 2 * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(restored, expected["t10k"][0])


def test_torchvision_root_without_files_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="mnist"):
        load_dataset("mnist", root=tmp_path)


def _write_cifar(folder, rng, n=8):
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, handle)
        batches[name] = (data, labels)
    return batches


def test_cifar10_python_batches_are_read(tmp_path):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", np.random.default_rng(1))
    data = load_dataset("cifar10", root=tmp_path)
    assert data.train_x.shape == (40, 3, 32, 32) and data.test_x.shape == (8, 3, 32, 32)
    assert data.test_y.tolist() == batches["test_batch"][1]
    first = ((data.train_x[0] + 1) / 2 * 255).round().to(torch.uint8).numpy().reshape(-1)
    assert np.array_equal(first, batches["data_batch_1"][0][0])


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder, np.random.default_rng(2))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({"data": Evil(), "labels": []}, handle)
    with pytest.raises(DataError, match="refusing"):
        load_dataset("cifar10", root=tmp_path)


def test_gzip_idx_writer_round_trips(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array, compress=True)
    payload = gzip.open(tmp_path / "a.gz").read()
    assert payload[:4] == bytes([0, 0, 8, 3]) and payload[16:] == array.tobytes()


def test_adapt_images_channels_and_size():
    gray = torch.rand(2, 1, 28, 28)
    rgb = adapt_images(gray, 3, 32)
    assert rgb.shape == (2, 3, 32, 32)
    assert torch.allclose(rgb[:, 0], rgb[:, 2])
    back = adapt_images(torch.rand(2, 3, 32, 32), 1, 28)
    assert back.shape == (2, 1, 28, 28)


def test_select_labels():
    x, y = torch.arange(10.0), torch.arange(10) % 5
    sx, sy = select_labels(x, y, [1, 3])
    assert sy.tolist() == [1, 3, 1, 3] and sx.tolist() == [1.0, 3.0, 6.0, 8.0]
