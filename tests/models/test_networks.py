import pytest
import torch
from safetensors.torch import save_file

from models.config import TrainSpec
from models.networks import NetworkSpec, build_network, pick_device
from models.training import freeze_batchnorm, train


@pytest.mark.parametrize("arch,channels,size", [("cnn", 1, 28), ("resnet_cifar", 3, 32), ("resnet18", 3, 32)])
def test_networks_map_images_to_k_logits(arch, channels, size):
    torch.manual_seed(0)
    net = build_network(NetworkSpec(arch=arch, in_channels=channels, image_size=size, width=4, num_classes=7))
    assert net(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_resnet_loads_a_local_weights_file(tmp_path):
    torch.manual_seed(0)
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    net = build_network(NetworkSpec(arch="resnet18", in_channels=3, image_size=32, weights=path))
    assert torch.equal(net.conv1.weight, reference.conv1.weight)
    with pytest.raises(FileNotFoundError):
        build_network(NetworkSpec(arch="resnet18", in_channels=3, weights=tmp_path / "missing.safetensors"))


def test_frozen_batchnorm_keeps_running_statistics():
    torch.manual_seed(0)
    net = build_network(NetworkSpec(arch="resnet_cifar", in_channels=1, image_size=28, width=4))
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    train(net, x, y, TrainSpec(epochs=1, batch_size=16), seed=0, device=torch.device("cpu"), progress=False,
          freeze_bn=True)
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    train(net, x, y, TrainSpec(epochs=1, batch_size=16), seed=0, device=torch.device("cpu"), progress=False)
    assert not all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    freeze_batchnorm(net)


def test_device_auto_picks_cuda_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu").type == "cpu"
    from models.networks import DeviceError

    with pytest.raises(DeviceError, match="CUDA device"):
        pick_device(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(DeviceError, match="unknown device"):
        pick_device("gpu-please")
