"""Early stopping of a one-shot search from its epoch history (DARTS+, Liang et al. 2019).

A criterion looks at the history records of the finished epochs (``history.jsonl``: each has the
derived ``genotype``, the architecture weights ``alphas`` and whether the epoch took
architecture steps) and returns the reason to stop, or ``None``. Criteria keep no state of their
own, so a resumed search stops where the uninterrupted one does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from nasrun import UserError
from nasrun.search.oneshot.plugin import OneShotPlugin
from nasrun.space.ops import OPS


class EarlyStop(Protocol):
    def check(self, history: Sequence[dict[str, Any]]) -> str | None:
        """The reason to stop after the last record of ``history``, or ``None`` to go on."""
        ...


class SkipConnects:
    """DARTS+ criterion 1: stop once the derived normal cell has ``max_skips`` or more skip-connects.

    Args:
        max_skips: the count that stops the search (DARTS+: 2).
        cell: the genotype's cell to count in.
    """

    def __init__(self, max_skips: int = 2, cell: str = "normal") -> None:
        if max_skips < 1:
            raise UserError(f"search.early_stop.max_skips={max_skips}: must be >= 1")
        self.max_skips = max_skips
        self.cell = cell

    def check(self, history: Sequence[dict[str, Any]]) -> str | None:
        edges = history[-1]["genotype"][self.cell]
        skips = sum(1 for op, _ in edges if op == "skip_connect")
        if skips >= self.max_skips:
            return f"the {self.cell} cell has {skips} skip-connects (criterion: >= {self.max_skips})"
        return None


def learnable_ops(ops: Sequence[str]) -> list[int]:
    """Indices of the ops that have weights of their own (convolutions), read from the op registry."""
    return [
        k
        for k, name in enumerate(ops)
        if name in OPS and any(True for _ in OPS[name](4, 1, True).parameters())
    ]


class StableRanking:
    """DARTS+ criterion 1*: stop once the ranking of the learnable ops' weights has not changed,
    on any edge of any cell type, for ``patience`` epochs of architecture steps.

    The op names come from the records (``ops``, or per-edge ``edge_ops`` where a method prunes
    candidates); ops with weights of their own are ranked, the others ignored.

    Args:
        patience: epochs without a change (DARTS+: 10).
    """

    def __init__(self, patience: int = 10) -> None:
        if patience < 1:
            raise UserError(f"search.early_stop.patience={patience}: must be >= 1")
        self.patience = patience
        self._learnable: dict[tuple[str, ...], list[int]] = {}

    def _positions(self, names: Sequence[str]) -> list[int]:
        key = tuple(names)
        if key not in self._learnable:
            self._learnable[key] = learnable_ops(names)
        return self._learnable[key]

    def _ranking(self, record: dict[str, Any]) -> list[list[int]]:
        out = []
        for kind in sorted(k for k in record["alphas"] if k != "edges"):
            for e, row in enumerate(record["alphas"][kind]):
                names = record["edge_ops"][kind][e] if "edge_ops" in record else record["ops"]
                keep = self._positions(names)
                W = torch.tensor(row)[keep]
                out.append([keep[i] for i in W.argsort(descending=True, stable=True).tolist()])
        return out

    def check(self, history: Sequence[dict[str, Any]]) -> str | None:
        stepped = [r for r in history if r.get("arch_steps", True)]  # warm-up epochs rank nothing
        if len(stepped) <= self.patience:
            return None
        window = [self._ranking(r) for r in stepped[-(self.patience + 1) :]]
        if all(w == window[0] for w in window[1:]):
            return f"the ranking of the learnable ops' weights has not changed for {self.patience} epochs"
        return None


class EarlyStopHook(OneShotPlugin):
    """A criterion as the loop's ``stop`` hook, checked only after epochs that took architecture steps.

    A warm-up epoch's cell is the random initial one (with DARTS's initialisation about a third of
    seeds already derive two skip-connects in the normal cell), which says nothing about the
    search: DARTS+ (Liang et al. 2019) stops on the cell the architecture steps have shaped.
    """

    def __init__(self, criterion: EarlyStop) -> None:
        self.criterion = criterion

    def stop(self, records: Sequence[dict[str, Any]]) -> str | None:
        if not records or not records[-1].get("arch_steps", True):
            return None
        return self.criterion.check(records)
