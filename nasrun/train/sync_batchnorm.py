"""BatchNorm over the global batch of a data-parallel run, on GPUs and on the CPU.

Data-parallel, each process sees its share of every batch. With plain BatchNorm each process would
normalise with its share's statistics (``DistributedDataParallel``'s default), so two processes
would not compute what one computes on the whole batch. ``convert`` turns a network's BatchNorms
into synchronised ones: PyTorch's ``torch.nn.SyncBatchNorm``, whose statistics are those of the
global batch, on GPUs. PyTorch's kernels for it (``batch_norm_stats``,
``batch_norm_gather_stats_with_counts``) exist only for GPUs, so on the CPU (the Gloo backend) the
same computation is written here with PyTorch's differentiable functional all-reduce
(``torch.distributed._functional_collectives``, which its deprecated ``torch.distributed.nn``
all-reduce points to): each process's count, mean and sum of squared deviations are combined as
in Chan et al.'s parallel variance, the gradient flowing back to every process's share.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class CPUSyncBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm whose training-mode statistics are those of every process's batch, on the CPU.

    A plain ``BatchNorm2d`` subclass: ``DistributedDataParallel`` refuses ``torch.nn.SyncBatchNorm``
    in a CPU module. Alone (no process group, or one process) it is ``BatchNorm2d``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.device.type != "cpu" or not (self.training and _processes() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0
        if self.track_running_stats:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return _global_batch_norm(self, input, factor)


def synced(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm that ``convert`` made."""
    return isinstance(module, (nn.SyncBatchNorm, CPUSyncBatchNorm2d))


def _processes() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` normalised with the statistics of every process's batch (training mode, on the CPU)."""
    C = x.size(1)
    dims = [0, *range(2, x.dim())]
    xf = x if x.dtype == torch.float64 else x.float()  # statistics in float32 at least (bf16 under AMP)
    count = x.numel() // C
    var, mean = torch.var_mean(xf, dim=dims, correction=0)
    row = torch.cat([mean, var * count, mean.new_full((1,), float(count))])
    # Every process's row in its own slot of a zero table: the all-reduce's sum is the table of
    # all rows (an all-gather whose backward, an all-reduce of the gradients, Gloo supports).
    rank, size = dist.get_rank(), dist.get_world_size()
    table = torch.stack([row if r == rank else torch.zeros_like(row) for r in range(size)])
    group = dist.group.WORLD
    assert group is not None  # _processes() > 1: the default group exists
    table = funcol.all_reduce(table, "sum", group)  # differentiable: its backward all-reduces
    means, m2s, counts = table[:, :C], table[:, C : 2 * C], table[:, 2 * C :]
    n = counts.sum()
    g_mean = (counts * means).sum(0) / n
    g_var = (m2s + counts * (means - g_mean) ** 2).sum(0) / n
    if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
        with torch.no_grad():
            bn.running_mean.lerp_(g_mean.detach(), factor)
            bn.running_var.lerp_(g_var.detach() * n / (n - 1).clamp(min=1), factor)
    shape = [1, C] + [1] * (x.dim() - 2)
    out = (xf - g_mean.view(shape)) * torch.rsqrt(g_var + bn.eps).view(shape)
    if bn.weight is not None:
        out = out * bn.weight.view(shape)
    if bn.bias is not None:
        out = out + bn.bias.view(shape)
    return out.to(x.dtype)


def convert(module: nn.Module, device: torch.device) -> None:
    """Synchronise ``module``'s BatchNorms (below it), in place.

    On a GPU, ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``; on the CPU, ``CPUSyncBatchNorm2d``
    in the same way. The new modules hold the same parameter and buffer tensors, so optimisers,
    checkpoints and references to the parameters carry on.
    """
    if device.type != "cpu":
        nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return
    for name, child in module.named_children():
        if not isinstance(child, _BatchNorm) or synced(child):
            convert(child, device)
            continue
        new = CPUSyncBatchNorm2d(
            child.num_features,
            child.eps,
            child.momentum,
            child.affine,
            child.track_running_stats,
            bias=child.bias is not None,
        )
        new.weight, new.bias = child.weight, child.bias
        new.running_mean, new.running_var = child.running_mean, child.running_var
        new.num_batches_tracked = child.num_batches_tracked
        new.train(child.training)
        setattr(module, name, new)
