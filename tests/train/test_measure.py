"""``count_flops`` against a hand count (torch's FlopCounterMode convention)."""

from __future__ import annotations

from torch import nn

from nasrun.train.measure import count_flops


def test_count_flops_matches_a_hand_count() -> None:
    # torch's FlopCounterMode counts a multiply-add as 2 FLOPs and leaves out bias additions,
    # activations and pooling: only the convolution and the matrix product count.
    net = nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=3, stride=2, padding=1),  # 8x8 -> 4x4
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    )
    conv_macs = (4 * 4 * 4) * (3 * 3 * 3)  # every output value: a 3x3 window over 3 channels
    linear_macs = 64 * 5
    assert count_flops(net, (1, 3, 8, 8)) == 2 * (conv_macs + linear_macs) == 4096
    # Per forward pass of the given input: a batch of two is twice the work.
    assert count_flops(net, (2, 3, 8, 8)) == 2 * 4096


def test_count_flops_restores_the_training_mode() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(18, 4))
    net.train()
    # Conv: 2 channels x 3x3 outputs x 9 MACs; linear 18 x 4.
    assert count_flops(net, (1, 1, 5, 5)) == 2 * (2 * 9 * 9 + 18 * 4)
    assert net.training
    net.eval()
    count_flops(net, (1, 1, 5, 5))
    assert not net.training
