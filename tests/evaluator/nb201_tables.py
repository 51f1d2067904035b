"""Made-up NAS-Bench-201 tables for tests that must not depend on the real one being present."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from nasrun.space.nb201 import NB201_OPS, NB201Space, to_string


def write_nb201_table(path: Path, seed: int = 0) -> Path:
    """All 15,625 cells with random accuracies in [10, 90) (every lookup succeeds)."""
    space, rng = NB201Space(), random.Random(seed)
    lines = ["arch,val_acc,test_acc"]
    for choices in itertools.product(range(len(NB201_OPS)), repeat=len(space.decisions())):
        arch = to_string(space.decode(list(choices)))
        lines.append(f"{arch},{rng.uniform(10, 90):.3f},{rng.uniform(10, 90):.3f}")
    path.write_text("\n".join(lines) + "\n")
    return path
