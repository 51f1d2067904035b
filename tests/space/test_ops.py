from __future__ import annotations

import pytest
import torch

from nasrun.space.genotype import GenotypeError
from nasrun.space.ops import DARTS_OPS, OPS, check_op, make_op


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_keeps_channels_and_strides_resolution(name: str, stride: int) -> None:
    op = make_op(name, 8, stride, affine=True)
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    y = op(x)
    assert y.shape == (2, 8, 8 // stride, 8 // stride)
    if name != "none":
        y.sum().backward()  # differentiable end to end
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_darts_ops_are_registered() -> None:
    assert len(DARTS_OPS) == 8 and set(DARTS_OPS) <= set(OPS)


def test_unknown_op_lists_valid_names() -> None:
    with pytest.raises(GenotypeError, match="unknown operation 'conv_9x9'.*sep_conv_3x3"):
        check_op("conv_9x9", "genotype.normal[0]")
