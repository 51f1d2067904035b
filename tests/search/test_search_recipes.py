"""Per-(method, space) search recipes and the weights' schedules, against the references' values.

The NAS-Bench-201 recipes are AutoDL-Projects' (github D-X-Y/AutoDL-Projects,
configs/nas-benchmark/algos/*.config and scripts-search/NAS-Bench-201-algos/*.sh); the constants
below carry the file and line they come from.
"""

from __future__ import annotations

import math

import pytest
import torch

from nasrun.search.oneshot.darts import weight_schedule


def _lrs(kind: str, epochs: int, period: int | None, mul: int, lr: float, lr_min: float) -> list[float]:
    """The lr of every epoch, as the search loop sees it (the schedule steps after each epoch)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    sched = weight_schedule(opt, kind, epochs, lr_min, period, mul)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _enas_micro_lr(epoch: int, lr_max: float = 0.05, lr_min: float = 5e-4) -> float:
    """enas src/utils.py:162-183 by epoch: the cosine over T_i epochs restarts, T_i doubling (T_0 = 10).

    (The reference's graph takes one step at the middle value on the first step of a restart epoch;
    every other step of that epoch is at lr_max, the value here.)
    """
    last_reset, T_i = 0, 10
    for e in range(epoch + 1):
        if e - last_reset >= T_i:
            last_reset, T_i = e, T_i * 2
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos((epoch - last_reset) / T_i * math.pi))


def _autodl_cos_lr(epoch: int, base: float, eta_min: float, T_max: int) -> float:
    """AutoDL xautodl/procedures/optimizers.py:88-96 (warm-up 0): the cosine of epoch / T_max."""
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * epoch / T_max)) / 2


def test_enas_micro_schedule_restarts_as_the_reference() -> None:
    # enas scripts/cifar10_micro_search.sh:12,24-27: 150 epochs, 0.05 -> 0.0005, T_0 10, T_mul 2.
    got = _lrs("cosine_restarts", 150, 10, 2, 0.05, 5e-4)
    want = [_enas_micro_lr(e) for e in range(150)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert [e for e in range(1, 150) if got[e] > got[e - 1]] == [10, 30, 70]  # the restarts


def test_autodl_enas_schedule_is_a_cosine_of_period_ten() -> None:
    # AutoDL configs/nas-benchmark/algos/ENAS.config:3-6: LR 0.05, eta_min 0.0005, 250 epochs, T_max 10.
    got = _lrs("cosine", 250, 10, 1, 0.05, 5e-4)
    want = [_autodl_cos_lr(e, 0.05, 5e-4, 10) for e in range(250)]
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert got[10] == pytest.approx(5e-4) and got[20] == pytest.approx(0.05)


def test_the_default_cosine_spans_the_epochs() -> None:
    # AutoDL GDAS.config:2-5 (and DARTS's): LR 0.025 -> 0.001 over the epochs (T_max = epochs).
    got = _lrs("cosine", 250, None, 1, 0.025, 0.001)
    assert got == pytest.approx([_autodl_cos_lr(e, 0.025, 0.001, 250) for e in range(250)], rel=1e-6)


# (method, key, value) on space=nb201, each from AutoDL-Projects' NAS-Bench-201 files.
NB201 = {
    "gdas": {  # GDAS.config:3-12, GDAS.sh:41-42
        "epochs": 250,
        "batch_size": 64,
        "lr": 0.025,
        "lr_min": 0.001,
        "weight_decay": 5e-4,
        "nesterov": True,
        "arch_lr": 3e-4,
        "arch_weight_decay": 1e-3,
        "train_portion": 0.5,
    },
    "rsps": {  # RANDOM.config:3-13, RANDOM-NAS.sh:43
        "epochs": 250,
        "batch_size": 64,
        "lr": 0.025,
        "lr_min": 0.001,
        "weight_decay": 5e-4,
        "nesterov": True,
        "grad_clip": 5.0,
        "train_portion": 0.5,
    },
    "enas": {  # ENAS.config:3-16
        "epochs": 250,
        "batch_size": 128,
        "lr": 0.05,
        "lr_min": 5e-4,
        "weight_decay": 2.5e-4,
        "nesterov": True,
        "lr_period": 10,
        "train_portion": 0.5,
    },
    "darts": {  # DARTS.config:3-12, DARTS-V1.sh:42
        "epochs": 50,
        "batch_size": 64,
        "lr": 0.025,
        "lr_min": 0.001,
        "weight_decay": 5e-4,
        "nesterov": True,
        "arch_lr": 3e-4,
        "arch_weight_decay": 1e-3,
    },
    "darts_2nd": {  # DARTS.config, DARTS-V2.sh:42
        "epochs": 50,
        "weight_decay": 5e-4,
        "nesterov": True,
        "order": 2,
    },
}


@pytest.mark.parametrize("method", sorted(NB201))
def test_each_method_composes_its_nb201_recipe(compose_cfg, method: str) -> None:
    search = compose_cfg(f"search={method}", "space=nb201").search
    assert {k: search[k] for k in NB201[method]} == pytest.approx(NB201[method])
    # experiment=smoke still shrinks it, and a command-line value still wins.
    assert compose_cfg("experiment=smoke", f"search={method}", "space=nb201").search.epochs == 1
    assert compose_cfg(f"search={method}", "space=nb201", "search.epochs=7").search.epochs == 7


def test_gdas_anneals_over_the_recipes_epochs(compose_cfg) -> None:
    """GDAS.py:237-239: tau = 10 - (10 - 0.1) * epoch / (250 - 1)."""
    from hydra.utils import instantiate

    sampler = instantiate(compose_cfg("search=gdas", "space=nb201").search.sampler)
    epochs = compose_cfg("search=gdas", "space=nb201").search.epochs
    for epoch in (0, 1, 124, 200, 249):
        sampler.set_epoch(epoch, epochs)
        assert sampler.tau == pytest.approx(10 - 9.9 * epoch / 249)


def test_the_cifar_recipes_stay_on_cifar_cell(compose_cfg) -> None:
    """No recipe file for cifar_cell: each method keeps its own file's values (DARTS's CIFAR protocol)."""
    for method in ("darts", "gdas"):
        search = compose_cfg(f"search={method}").search
        assert (search.epochs, search.weight_decay, search.nesterov) == (50, 3e-4, False)
    rsps = compose_cfg("search=rsps").search  # randomNAS_release random_weight_share.py:171-173
    assert (rsps.epochs, rsps.batch_size, rsps.grad_clip) == (100, 64, 0.25)
    assert (rsps["update"].final_candidates, rsps["update"].score_batches, rsps["update"].score_bn) == (
        1000,
        10,
        "eval",
    )
