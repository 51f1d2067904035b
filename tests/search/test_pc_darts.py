"""PC-DARTS: partial channel connections, the channel shuffle, and edge normalisation in derivation."""

from __future__ import annotations

import torch

from nasrun.search.oneshot.edges import DenseEdge, PartialChannelEdge, channel_shuffle
from nasrun.search.oneshot.network import OneShotNetwork
from nasrun.space.cifar_cell import CifarCellSpace

OPS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]


def test_shuffle_is_a_permutation_that_interleaves_the_groups() -> None:
    x = torch.arange(8.0).view(1, 8, 1, 1)
    order = channel_shuffle(x, groups=4).flatten().long().tolist()
    assert sorted(order) == list(range(8)) and order == [0, 2, 4, 6, 1, 3, 5, 7]


def test_partial_edge_shapes_and_only_a_kth_of_the_channels_pass_the_ops() -> None:
    torch.manual_seed(0)
    for stride in (1, 2):
        edge = PartialChannelEdge(8, stride, OPS, k=4)
        assert isinstance(edge.mixed, DenseEdge) and edge.mixed.C == 2  # the ops are built for C / k channels
        x = torch.randn(3, 8, 8, 8)
        w = torch.softmax(torch.randn(len(OPS)), -1)
        out = edge(x, w)
        assert out.shape == (3, 8, 8 // stride, 8 // stride)
        # Changing the bypassed channels (2..7) leaves the ops' output alone: after the shuffle the
        # ops' channels sit at positions 0, 4 (every k-th).
        x2 = x.clone()
        x2[:, 2:] += 1.0
        out2 = edge(x2, w)
        assert torch.equal(out[:, ::4], out2[:, ::4])
        assert not torch.equal(out, out2)
        if stride == 1:  # the bypass is the identity: the shuffled input channels come out unchanged
            assert torch.equal(out2[:, [1, 2, 3, 5, 6, 7]], x2[:, [2, 4, 6, 3, 5, 7]])


def test_edge_weights_enter_the_derivation() -> None:
    space = CifarCellSpace(layers=3, channels=4, nodes=2, ops=OPS)
    net = OneShotNetwork(space, 10, 1, DenseEdge, edge_normalisation=True)
    assert net.arch.betas is not None
    with torch.no_grad():
        for t in ("normal", "reduce"):
            net.arch.alphas[t].zero_()
            net.arch.alphas[t][:, 3] = 1.0  # sep_conv strongest on every edge ...
            net.arch.alphas[t][2, 3] = 1.2  # ... and strongest of all on node 3's edge from input 0
            net.arch.betas[t].zero_()
    plain = net.genotype()
    assert plain.normal[2] == ("sep_conv_3x3", 0)  # node 3 keeps inputs 0 and 1 (edges 2, 3)
    with torch.no_grad():
        net.arch.betas["normal"][4] = 3.0  # node 3's edge from node 2 gets most of the node's weight
    scaled = net.genotype()
    assert ("sep_conv_3x3", 2) in scaled.normal[2:4] and ("sep_conv_3x3", 2) not in plain.normal[2:4]
    assert scaled.reduce == plain.reduce  # only the normal cell's betas changed
