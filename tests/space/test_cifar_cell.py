from __future__ import annotations

import pytest
import torch

from nasrun import UserError
from nasrun.pipeline import named_genotype
from nasrun.report.results import count_params
from nasrun.space.cifar_cell import CifarCellSpace


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


def test_too_few_layers_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="space.layers=2"):
        CifarCellSpace(layers=2)


def test_supernet_forward_and_alpha_shapes() -> None:
    net = CifarCellSpace(layers=3, channels=4).build_supernet(num_classes=10, in_channels=3)
    assert net.alphas_normal.shape == (14, 8) and net.alphas_reduce.shape == (14, 8)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    names = {n for n, _ in net.named_parameters()}
    assert {"alphas_normal", "alphas_reduce"} <= names
    assert len(net.weight_parameters()) == len(names) - 2


def test_unknown_genotype_name_is_one_line_listing_the_options() -> None:
    with pytest.raises(
        UserError, match=r"genotype=nope: no such file in conf/genotype/ \(options: darts_v1, darts_v2\)"
    ):
        named_genotype("nope")
