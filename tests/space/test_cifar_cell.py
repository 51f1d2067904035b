from __future__ import annotations

import pytest
import torch

from nasrun import UserError
from nasrun.pipeline import named_genotype
from nasrun.space.cifar_cell import CifarCellSpace, drop_path
from nasrun.train.measure import count_params


@pytest.mark.parametrize("auxiliary, expected", [(False, 3_349_342), (True, 3_825_768)])
def test_darts_v2_at_paper_size_has_the_reference_parameter_count(auxiliary: bool, expected: int) -> None:
    """The count the DARTS reference code reports: the check that cells are wired as in the paper."""
    genotype = named_genotype("darts_v2")
    net = CifarCellSpace().build_network(
        genotype, num_classes=10, in_channels=3, channels=36, layers=20, auxiliary=auxiliary
    )
    assert sum(p.numel() for p in net.parameters()) == expected
    assert count_params(net) == 3_349_342  # reported size excludes the auxiliary head


def test_network_forward_with_auxiliary_head_and_drop_path() -> None:
    genotype = named_genotype("darts_v1")
    net = CifarCellSpace().build_network(
        genotype, num_classes=10, in_channels=1, channels=8, layers=5, auxiliary=True
    )
    net.drop_path_prob = 0.2
    logits, aux = net(torch.randn(4, 1, 16, 16))  # 16x16 input: 4x4 maps at the auxiliary head
    assert logits.shape == aux.shape == (4, 10)
    net.eval()
    assert net(torch.randn(4, 1, 16, 16)).shape == (4, 10)


def test_a_share_of_a_batch_gets_its_rows_of_the_global_batchs_drop_path_masks() -> None:
    """Data-parallel processes in the same random state, each with its rows of a global batch of 7,
    drop the paths that one process drops on the whole batch."""
    x = torch.randn(7, 3, 2, 2)
    torch.manual_seed(1)
    whole = drop_path(x, 0.5)
    parts = []
    for start, stop in [(0, 4), (4, 7)]:
        torch.manual_seed(1)
        parts.append(drop_path(x[start:stop], 0.5, (7, start, stop)))
    assert torch.equal(torch.cat(parts), whole)
    assert 0 < int((whole.flatten(1) == 0).all(1).sum()) < 7  # some rows dropped, not all
    torch.manual_seed(1)
    assert not torch.equal(drop_path(x[4:7], 0.5), whole[4:7])  # its own draws: other masks
    with pytest.raises(ValueError, match="rows 0:4 for a batch of 3"):
        drop_path(x[4:7], 0.5, (7, 0, 4))


def test_too_few_layers_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="space.layers=2"):
        CifarCellSpace(layers=2)


def test_supernet_skeleton_takes_the_methods_edges_and_weights() -> None:
    from nasrun.search.oneshot.edges import DenseEdge

    space = CifarCellSpace(layers=3, channels=4)
    topo = space.topology()
    assert topo.cell_types == ("normal", "reduce") and len(topo.edges) == 14 and len(topo.ops) == 8
    assert [s.stop - s.start for s in topo.node_slices()] == [2, 3, 4, 5]
    built: list[tuple[int, int]] = []

    def make_edge(C: int, stride: int, ops) -> DenseEdge:
        built.append((C, stride))
        return DenseEdge(C, stride, ops)

    net = space.build_supernet(num_classes=10, in_channels=3, make_edge=make_edge)
    assert len(built) == 3 * 14  # every edge of every cell, by the method's factory
    # Two reduction cells; in each, every node reads inputs 0 and 1 at stride 2.
    assert sum(stride == 2 for _, stride in built) == 2 * 4 * 2
    w = {t: torch.softmax(torch.randn(14, 8), -1) for t in topo.cell_types}
    assert net(torch.randn(2, 3, 16, 16), w).shape == (2, 10)
    assert not any("alpha" in n for n, _ in net.named_parameters())  # the method owns the architecture


def test_unknown_genotype_name_is_one_line_listing_the_options() -> None:
    with pytest.raises(
        UserError,
        match=r"genotype=nope: no such file in conf/genotype/ \(options: darts_v1, darts_v2, snas_aggressive, snas_mild\)",
    ):
        named_genotype("nope")
