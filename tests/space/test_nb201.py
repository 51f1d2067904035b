"""The NAS-Bench-201 space: string round-trips, the decision view, errors, the network."""

from __future__ import annotations

import itertools

import pytest
import torch

from nasrun.space.base import SearchSpace
from nasrun.space.genotype import Genotype, GenotypeError
from nasrun.space.nb201 import NB201_OPS, NB201Space, from_string, to_string

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"


def test_space_implements_the_protocol() -> None:
    space = NB201Space()
    assert isinstance(space, SearchSpace)
    assert space.decisions() == [5] * 6
    assert space.decision_groups() == [1, 2, 3]


def test_every_cell_round_trips_through_choices_and_string() -> None:
    space = NB201Space()
    strings = set()
    for choices in itertools.product(range(5), repeat=6):
        g = space.decode(choices)
        s = space.describe(g)
        assert space.encode(from_string(s)) == list(choices)
        strings.add(s)
    assert len(strings) == 5**6


def test_string_form_matches_the_benchmark() -> None:
    g = from_string(BEST)
    assert g.normal == (
        ("nor_conv_3x3", 0),
        ("nor_conv_3x3", 0),
        ("nor_conv_3x3", 1),
        ("skip_connect", 0),
        ("nor_conv_1x1", 1),
        ("nor_conv_3x3", 2),
    )
    assert g.space == "nb201" and g.normal_concat == (3,)
    assert to_string(g) == BEST
    # The genotype file round-trips too.
    assert to_string(Genotype.from_dict(g.to_dict())) == BEST


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BEST.replace("nor_conv_1x1", "conv_9x9"), "unknown op 'conv_9x9'"),
        (BEST.replace("skip_connect~0", "skip_connect~2"), "edge 3 must read node 0"),
        ("|nor_conv_3x3~0|+|none~0|", "expected 3 nodes"),
        (BEST.replace("~1|+", "1|+"), "is not op~input"),
        (BEST.replace("|+|", "+"), "must look like"),
    ],
)
def test_bad_strings_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(GenotypeError, match="row 7.*" + message.replace("(", r"\(")):
        from_string(text, where="row 7")


def test_validate_rejects_other_spaces_and_bad_choices() -> None:
    space = NB201Space()
    with pytest.raises(GenotypeError, match="not 'nb201'"):
        space.validate(Genotype(normal=from_string(BEST).normal, normal_concat=(3,), space="cifar_cell"))
    with pytest.raises(GenotypeError, match="6 op indices"):
        space.decode([0, 1, 2])
    with pytest.raises(GenotypeError, match="6 op indices"):
        space.decode([0, 1, 2, 3, 4, 5])


def test_network_shapes_and_size() -> None:
    space = NB201Space(channels=4, cells=1)
    net = space.build_network(from_string(BEST), num_classes=10, in_channels=1)
    out = net(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10)
    # Stem, 3 stages of 1 cell, 2 residual reduction blocks: 3 cells hold 6 edge modules each.
    assert len(net.cells) == 5
    # A deeper/wider override builds a bigger network than the space's default.
    big = space.build_network(from_string(BEST), 10, 1, channels=8, cells=2)
    assert sum(p.numel() for p in big.parameters()) > sum(p.numel() for p in net.parameters())


def test_degenerate_cells_still_build_and_run() -> None:
    space = NB201Space(channels=4, cells=1)
    # All `none`: every cell outputs zeros (the table gives such cells 10 %), but it runs.
    dead = space.build_network(space.decode([0] * 6), num_classes=3, in_channels=3)
    assert torch.isfinite(dead(torch.randn(2, 3, 16, 16))).all()
    # All `skip_connect`: no parameters in the cells, gradients still reach the stem.
    skip = space.build_network(space.decode([1] * 6), num_classes=3, in_channels=3)
    skip(torch.randn(2, 3, 16, 16)).sum().backward()
    assert skip.stem[0].weight.grad is not None and skip.stem[0].weight.grad.abs().sum() > 0


def test_ops_are_the_benchmarks() -> None:
    assert NB201_OPS == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    net = NB201Space(channels=4, cells=1).build_network(from_string(BEST), 10, 3)
    conv3 = net.cells[0].edges[0]
    # ReLU -> conv -> BN, 3x3 keeping the channel count (NAS-Bench-201's ReLUConvBN).
    assert [type(m).__name__ for m in conv3] == ["ReLU", "Conv2d", "BatchNorm2d"]
    assert conv3[1].kernel_size == (3, 3) and conv3[1].in_channels == conv3[1].out_channels == 4
