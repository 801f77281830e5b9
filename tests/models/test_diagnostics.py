"""The dead-unit counter against networks whose dead units are known by construction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.diagnostics import dead_units, unit_activity
from models.networks import NetworkSpec, build_network


def _hand_built() -> nn.Sequential:
    """conv (4 channels) → ReLU → flatten → linear (5 features) → ReLU → linear.

    On inputs in [0, 1]: conv channel 1 has weights −1 and bias −0.1, so it is negative everywhere (dead);
    channel 3 is all zeros with bias 0, so its ReLU output is exactly 0 (dead); channels 0 and 2 have
    weights +1 (alive). Linear features 1 and 4 have weight −1 on every input (which are ≥ 0) and bias −1
    (dead); feature 2 has zero weights and bias +0.5 (alive on every input, never zero)."""
    conv = nn.Conv2d(1, 4, 3, padding=1)
    lin = nn.Linear(4 * 6 * 6, 5)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0].fill_(1.0)
        conv.weight[1].fill_(-1.0)
        conv.bias[1] = -0.1
        conv.weight[2].fill_(0.5)
        lin.weight.fill_(0.01)
        lin.bias.zero_()
        lin.weight[1].fill_(-1.0)
        lin.bias[1] = -1.0
        lin.weight[4].fill_(-1.0)
        lin.bias[4] = -1.0
        lin.weight[2].zero_()
        lin.bias[2] = 0.5
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin, nn.ReLU(), nn.Linear(5, 3))


def test_counts_the_dead_channels_and_features_of_a_hand_built_network():
    torch.manual_seed(0)
    x = torch.rand(37, 1, 6, 6) * 0.9 + 0.1  # strictly positive inputs
    net = _hand_built()
    assert dead_units(net, x, batch_size=8) == {"1": 2, "4": 2}  # several batches: dead must hold in all
    assert unit_activity(net, x) == {"1": (2, 4), "4": (2, 5)}


def test_a_unit_alive_on_one_input_only_is_alive():
    net = _hand_built()
    with torch.no_grad():  # linear feature 4 reads only conv channel 0 at position (0, 0): the sum of the four
        net[3].weight[4].zero_()  # pixels of the zero-padded corner, 2.0 on a constant 0.5 image
        net[3].weight[4, 0] = 100.0
        net[3].bias[4] = -220.0
    x = torch.full((20, 1, 6, 6), 0.5)
    assert dead_units(net, x)["4"] == 2
    x[13, 0, 0, 0] = 1.0  # one pixel of one input: 100 * 2.5 - 220 > 0
    assert dead_units(net, x)["4"] == 1
    assert dead_units(net, x[12:13])["4"] == 2 and dead_units(net, x[13:14])["4"] == 1


def test_leaves_the_model_as_it_was_and_counts_never_positive_units_of_gelu():
    torch.manual_seed(0)
    net = build_network(NetworkSpec(width=4, activation="gelu")).train()
    x = torch.rand(16, 1, 28, 28)
    before = dead_units(net, x)
    assert set(before) == {"features.1", "features.4", "classifier.2"}
    fired = torch.nn.functional.gelu(net.classifier[1](net.classifier[0](net.features(x)))).gt(0).any(0)
    alive = fired.nonzero().flatten()[:3]
    assert len(alive) == 3
    with torch.no_grad():
        net.classifier[1].bias[alive] = -1e4  # three live hidden features pushed far below zero
    assert dead_units(net, x) == {**before, "classifier.2": before["classifier.2"] + 3}
    assert net.training
    assert all(not m._forward_hooks for m in net.modules())


def test_default_cnn_has_relu_and_other_activations_are_cnn_only():
    assert isinstance(build_network(NetworkSpec()).classifier[2], nn.ReLU)
    assert isinstance(build_network(NetworkSpec(activation="gelu")).features[1], nn.GELU)
    assert isinstance(build_network(NetworkSpec(activation="leaky_relu")).classifier[2], nn.LeakyReLU)
    with pytest.raises(ValueError, match="cnn"):
        NetworkSpec(arch="resnet_cifar", activation="gelu")
