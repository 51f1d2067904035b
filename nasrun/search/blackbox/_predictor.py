"""An ensemble of small MLPs that predicts an architecture's score from its encoding.

PNAS (Liu et al., ECCV 2018, Sec. 3.3) ranks candidate cells with an ensemble of 5 predictors, each
fit on a different 4/5 of the evaluated architectures, and uses the ensemble mean; the spread of
the members is a cheap uncertainty (White et al., BANANAS, AAAI 2021). The members are trained
together as one batched network (one matrix multiply per layer for all of them).
"""

from __future__ import annotations

import torch


class MLPEnsemble:
    """Fit-and-predict ensemble of two-hidden-layer MLP regressors on ``[n, D]`` float64 features.

    Args:
        members: ensemble size (PNAS: 5).
        hidden: width of the two hidden layers (PNAS: 100).
        epochs: full-batch Adam steps per fit (the data sets here have at most a few hundred rows).
        lr: Adam learning rate.
        weight_decay: L2 penalty, against overfitting a few dozen points.
    """

    def __init__(
        self,
        members: int = 5,
        hidden: int = 100,
        epochs: int = 300,
        lr: float = 0.01,
        weight_decay: float = 1e-4,
    ) -> None:
        self.members = members
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.params: list[torch.Tensor] = []
        self.mean = 0.0
        self.std = 1.0

    def fit(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
        """Fit member ``m`` on all rows of ``(x [n, D], y [n])`` but the ``m``-th fifth.

        ``generator`` drives the folds and the weight initialisation, so a fit is reproducible.
        """
        n, M = len(y), self.members
        std = float(y.std()) if n > 1 else 0.0
        self.mean, self.std = float(y.mean()), std if std > 0 else 1.0
        z = (y - self.mean) / self.std  # standardised targets: one learning rate fits any score scale
        order = torch.randperm(n, generator=generator)
        keep = torch.ones(M, n, dtype=torch.float64)
        if n >= M:  # with fewer rows than members every member sees everything
            for m in range(M):
                keep[m, order[m * n // M : (m + 1) * n // M]] = 0.0
        sizes = [x.shape[1], self.hidden, self.hidden, 1]
        self.params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = fan_in**-0.5  # PyTorch's default Linear initialisation range
            for shape in ((M, fan_in, fan_out), (M, 1, fan_out)):
                p = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
                self.params.append(p.requires_grad_())
        opt = torch.optim.Adam(self.params, lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            opt.zero_grad()
            # L1 loss as in PNAS: robust to the few badly trained (outlier) architectures.
            err = (self._forward(x) - z).abs()  # [M, n]
            loss = ((err * keep).sum(1) / keep.sum(1)).sum()
            loss.backward()
            opt.step()

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble mean and standard deviation of the predicted score, each ``[n]``."""
        with torch.no_grad():
            preds = self._forward(x) * self.std + self.mean  # [M, n]
        return preds.mean(0), preds.std(0) if self.members > 1 else torch.zeros(len(x), dtype=x.dtype)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, D] -> [members, n]``."""
        w1, b1, w2, b2, w3, b3 = self.params
        h = torch.relu(torch.matmul(x, w1) + b1)  # [M, n, H]
        h = torch.relu(torch.bmm(h, w2) + b2)
        return (torch.bmm(h, w3) + b3).squeeze(-1)
