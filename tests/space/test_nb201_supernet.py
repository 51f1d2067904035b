"""NAS-Bench-201 as a one-shot space: topology, supernet skeleton, per-edge derivation, cell weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasrun.search.oneshot.edges import DenseEdge
from nasrun.space.base import OneShotSpace, SampledSpace
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.space.genotype import GenotypeError
from nasrun.space.nb201 import NB201_OPS, NB201Space, from_string
from nasrun.space.nb201_supernet import NB201SearchCell


def test_nb201_is_a_one_shot_space_whose_cells_can_be_sampled() -> None:
    space = NB201Space(channels=4, cells=1)
    assert isinstance(space, OneShotSpace) and isinstance(space, SampledSpace)
    topo = space.topology()
    assert topo.cell_types == ("normal",) and topo.ops == NB201_OPS and topo.kept_inputs is None
    assert topo.edges == ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
    assert [(s.start, s.stop) for s in topo.node_slices()] == [(0, 1), (1, 3), (3, 6)]


def test_supernet_is_the_benchmarks_macro_network_with_the_methods_edges() -> None:
    space = NB201Space(channels=4, cells=2)
    calls: list[tuple[int, int, tuple[str, ...]]] = []

    def make_edge(C: int, stride: int, ops) -> DenseEdge:
        calls.append((C, stride, tuple(ops)))
        return DenseEdge(C, stride, ops)

    net = space.build_supernet(num_classes=10, in_channels=1, make_edge=make_edge)
    # 3 stages x 2 cells x 6 edges, every edge stride 1, widths C, 2C, 4C.
    assert len(calls) == 36 and {s for _, s, _ in calls} == {1}
    assert [c for c, _, _ in calls[::6]] == [4, 4, 8, 8, 16, 16]
    assert sum(isinstance(m, NB201SearchCell) for m in net.modules()) == 6
    w = {"normal": torch.softmax(torch.randn(6, 5), -1)}
    assert net(torch.randn(2, 1, 8, 8), w).shape == (2, 10)


class _ScaleEdge(nn.Module):
    """A toy edge whose op ``k`` multiplies by ``k + 1``: cell outputs can be computed by hand."""

    def __init__(self, C: int, stride: int, ops) -> None:
        super().__init__()
        self.n = len(ops)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return sum(w[k] * (k + 1) * x for k in range(self.n))  # type: ignore[return-value]


class _FanOutScaleEdge(_ScaleEdge):
    """``_ScaleEdge`` with a fused path (``fan_out``) that counts the states it served."""

    fan_outs = 0

    @staticmethod
    def fan_out(edges, x: torch.Tensor, weights: torch.Tensor) -> list[torch.Tensor]:
        _FanOutScaleEdge.fan_outs += 1
        return [e(x, w) for e, w in zip(edges, weights, strict=True)]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "edge_by_edge"])
def test_the_cell_wires_every_edge_from_its_input_node_to_its_node(
    fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = NB201Space(channels=4, cells=1)
    genotype = from_string(
        "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|skip_connect~2|"
    )
    monkeypatch.setattr(_FanOutScaleEdge, "fan_outs", 0)
    cell = NB201SearchCell(4, space.topology().edges, [list(NB201_OPS)] * 6, _FanOutScaleEdge, fused=fused)
    W = space.genotype_weights(genotype)["normal"]
    x = torch.randn(2, 4, 3, 3)
    # Factors by op index (none 1, skip 2, conv1 3, conv3 4, pool 5):
    # n1 = 4 x; n2 = 2 x + 3 n1 = 14 x; n3 = 5 x + 1 n1 + 2 n2 = 37 x.
    torch.testing.assert_close(cell(x, W), 37 * x)
    scales = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 1.0])  # PC-DARTS-style factors on the edges
    torch.testing.assert_close(cell(x, W, scales), 32 * x)
    assert _FanOutScaleEdge.fan_outs == (2 * 3 if fused else 0)  # nodes 0-2 read by each call


def test_derivation_is_the_argmax_of_every_edge_none_included() -> None:
    space = NB201Space()
    W = torch.full((6, 5), 0.1)
    for e, k in enumerate([0, 3, 1, 4, 2, 0]):
        W[e, k] = 0.9
    genotype = space.derive({"normal": W})
    assert space.describe(genotype) == (
        "|none~0|+|nor_conv_3x3~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"
    )
    assert space.derive({"normal": torch.zeros(6, 5)}).normal[0][0] == "none"  # ties: the first op
    # Pruned candidates: each edge's own names.
    pruned = {"normal": [["skip_connect", "nor_conv_3x3"]] * 6}
    assert {op for op, _ in space.derive({"normal": torch.tensor([[0.2, 0.8]] * 6)}, pruned).normal} == {
        "nor_conv_3x3"
    }


def test_genotype_weights_round_trip_through_derivation() -> None:
    space = NB201Space()
    genotype = from_string("|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|")
    W = space.genotype_weights(genotype)["normal"]
    assert W.shape == (6, 5) and W.sum(1).tolist() == [1.0] * 6
    assert space.derive({"normal": W}) == genotype
    with pytest.raises(GenotypeError, match=r"genotype.normal\[0\]: 'nor_conv_3x3' is not a candidate"):
        space.genotype_weights(genotype, {"normal": [["none", "skip_connect"]] * 6})


def test_cifar_cell_genotype_weights_put_each_genotype_edge_on_its_supernet_edge() -> None:
    space = CifarCellSpace(nodes=2, ops=["none", "skip_connect", "sep_conv_3x3"])
    # Per node: input 1, input 2, op 1, op 2 (ops index the choosable ops: skip_connect, sep_conv_3x3).
    genotype = space.decode([0, 1, 1, 0, 2, 2, 0, 1] + [1, 1, 1, 1, 0, 1, 1, 0])
    W = space.genotype_weights(genotype)
    # Node 2 (edges 0, 1): sep from 0, skip from 1; node 3 (edges 2..4) takes input 2 twice, with
    # both ops on that one edge.
    assert W["normal"].tolist() == [[0, 0, 1], [0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 1, 1]]
    # The reduce cell's node 2 takes sep_conv_3x3 from input 1 twice: it counts 2.
    assert W["reduce"].tolist() == [[0, 0, 0], [0, 0, 2], [0, 0, 1], [0, 1, 0], [0, 0, 0]]
