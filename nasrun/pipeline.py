"""One nasrun run: build the components from the config, search, derive, retrain, report.

This module wires what the config names; it never branches on an algorithm's name. Every
component is built (and its arguments checked) before any training starts.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from nasrun import UserError
from nasrun.bo.reporting import current_reporter
from nasrun.config import config_dir, register_configs
from nasrun.config.build import build
from nasrun.config.run_guard import refuse_overwrite
from nasrun.config.sweeps import task_epochs
from nasrun.console import get_console
from nasrun.data.base import DataModule
from nasrun.run_folder import PhaseClock, write_json_atomic
from nasrun.search.base import SearchContext, SearchResult
from nasrun.space.genotype import Genotype, GenotypeError
from nasrun.train.distributed import SINGLE, leave
from nasrun.train.measure import count_flops, count_params
from nasrun.train.threads import apply_threads, hydra_launcher, launcher_jobs, resolve_threads

# torch and NumPy take 64-bit seeds, and the per-epoch generators derive seeds from the run's
# (seed * 1_000_003 + ...), which must still fit: 32 bits leave room for that.
SEED_MAX = 2**32 - 1


def check_seed(seed: object) -> None:
    """Refuse a seed that seeding would reject deep inside torch, with a traceback.

    Raises:
        UserError: ``seed`` is not an integer in ``[0, SEED_MAX]``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise UserError(f"seed={seed}: must be an integer from 0 to {SEED_MAX}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _given_genotype(cfg: DictConfig) -> Genotype | None:
    """The genotype named by ``genotype_path`` or the ``genotype`` group, if any."""
    if cfg.get("genotype_path"):
        return Genotype.load(Path(str(cfg.genotype_path)).expanduser())
    if cfg.get("genotype") is not None:
        data = OmegaConf.to_container(cfg.genotype, resolve=True)
        assert isinstance(data, dict)
        name = data.pop("name", "") or "genotype"
        return Genotype.from_dict(data, where=f"genotype={name}")
    return None


def named_genotype(name: str) -> Genotype:
    """The genotype ``conf/genotype/NAME.yaml``, composed and checked as ``genotype=NAME`` would be."""
    from hydra import compose, initialize_config_dir

    register_configs()  # the config files name their schemas, which must be stored before composing
    known = sorted(f.stem for f in (config_dir() / "genotype").glob("*.yaml"))
    if name not in known:
        raise UserError(f"genotype={name}: no such file in conf/genotype/ (options: {', '.join(known)})")
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="config", overrides=[f"genotype={name}"])
    genotype = _given_genotype(cfg)
    assert genotype is not None
    return genotype


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Run the task described by ``cfg`` in ``run_dir``; return its numeric results.

    Returns:
        The numbers of ``result.json`` by name (``val_acc``, ``test_acc``, ``search_val_acc``,
        ``params``, ...). A sweep optimises the one named by its objective key
        (``hydra.sweeper.objective``, default ``val_acc``); a key the run did not measure (e.g.
        ``val_acc`` after retraining without a validation split) is absent, never replaced by
        another metric.

    Raises:
        UserError: for anything wrong in the config or the files it names.
    """
    console = get_console()
    check_seed(cfg.seed)
    console.print(f"run folder: {run_dir}", markup=False, highlight=False, soft_wrap=True)
    # CPU threads first, before torch does any parallel work: this process's share of the machine.
    setting = OmegaConf.select(cfg, "trainer.threads", default="auto")
    threads = apply_threads(resolve_threads(setting, jobs=launcher_jobs(hydra_launcher())))
    refuse_overwrite(run_dir, cfg.resume)  # a single run was checked before Hydra wrote; sweep jobs here
    seed_everything(cfg.seed)
    task = str(cfg.task.value if hasattr(cfg.task, "value") else cfg.task)

    # -- build and validate everything first ---------------------------------------------------
    space = build(cfg, "space")
    trainer = build(cfg, "trainer") if cfg.get("trainer") is not None else None
    world = trainer.world if trainer is not None else SINGLE
    if not world.main:
        console.quiet = True  # the first process prints and writes for all
    given = _given_genotype(cfg)
    if task == "retrain":
        if given is None:
            raise UserError(
                "task=retrain needs genotype=NAME (see conf/genotype/) or genotype_path=PATH/genotype.json"
            )
        if cfg.get("retrain") is None or not cfg.retrain.enabled:
            raise UserError("task=retrain needs retraining enabled (retrain.enabled=true)")
        try:
            space.validate(given, sized=False)
        except GenotypeError as e:
            # Name the file too: the message alone says "genotype: ...".
            raise GenotypeError(f"{cfg.genotype_path}: {e}" if cfg.get("genotype_path") else str(e)) from None
    strategy = build(cfg, "search", space=space, seed=cfg.seed) if task == "nas" else None
    if task == "nas" and strategy is None:
        raise UserError("task=nas needs a search strategy (search=darts, search=random_search, ...)")
    evaluator = build(cfg, "evaluator") if cfg.get("evaluator") is not None else None
    if strategy is not None and world.active:
        refusal = (
            strategy.data_parallel_refusal(evaluator)
            if hasattr(strategy, "data_parallel_refusal")
            else "a black-box search runs in one process"
        )
        if refusal is not None:
            raise UserError(
                f"trainer.distributed=auto: {refusal}; search without torchrun, then retrain its "
                "genotype.json data-parallel (task=retrain genotype_path=...)"
            )
    retrain = cfg.get("retrain") is not None and cfg.retrain.enabled
    if retrain and cfg.get("data") is None:
        raise UserError(
            "retraining needs data (data=digits, data=cifar10, ...); or skip it with retrain.enabled=false"
        )

    def load_data() -> DataModule:
        if cfg.get("data") is None:
            raise UserError("this run needs data (data=digits, data=cifar10, ...)")
        loaded = build(cfg, "data")
        console.print(
            f"[bold]data[/] {loaded.describe()}  [bold]device[/] {trainer.device if trainer else '-'}"
            f"  [bold]threads[/] {threads}",
            soft_wrap=True,  # one line in logs too
        )
        return loaded

    # In a BoTorch sweep, the phase whose accuracy is the objective reports it after every epoch
    # to the sweep's trial store, whose pruner may stop the run there (TrialPruned).
    epochs = task_epochs(cfg)
    reporter = current_reporter(max_epochs=epochs[1] if epochs else None)
    report = [reporter.sink()] if reporter is not None else []
    # Images are loaded only when something asks for them: a tabular benchmark run never does.
    ctx = SearchContext(
        space=space,
        run_dir=run_dir,
        seed=cfg.seed,
        resume=cfg.resume,
        data=load_data,
        trainer=trainer,
        evaluator=evaluator,
        sinks=[] if retrain else report,
    )
    if retrain:
        assert ctx.data is not None  # load now: a missing data set stops the run before the search

    result: dict[str, Any] = {"task": task, "seed": cfg.seed, "space": space.name}
    if world.active:
        result["processes"] = world.size  # data-parallel over this many processes
    timings: dict[str, float] = {}

    # -- search ---------------------------------------------------------------------------------
    if strategy is not None:
        clock = PhaseClock(
            run_dir, "search", cfg.resume, write=world.main
        )  # counts the time before a resume too
        searched: SearchResult = strategy.run(ctx)
        timings["search_s"] = clock.stop()
        genotype = searched.genotype
        result.update(searched.metrics)
    else:
        assert given is not None
        genotype = given
    result["genotype"] = space.describe(genotype)
    if world.main:
        genotype.save(run_dir / "genotype.json")
        _draw(genotype, run_dir)

    # -- retrain --------------------------------------------------------------------------------
    if retrain:
        data = ctx.data
        assert data is not None and trainer is not None
        net_cfg: dict[str, Any] = OmegaConf.to_container(cfg.retrain.network, resolve=True)  # type: ignore[assignment]
        seed_everything(cfg.seed)
        try:
            model = space.build_network(
                genotype, num_classes=data.num_classes, in_channels=data.in_channels, **net_cfg
            )
        except TypeError as e:
            raise UserError(f"retrain.network: {e} (space {space.name!r})") from None
        result["params"] = count_params(model)
        result["flops"] = count_flops(model, (1, data.in_channels, data.image_size, data.image_size))
        clock = PhaseClock(run_dir, "retrain", cfg.resume, write=world.main)
        metrics = trainer.fit(
            model,
            data,
            run_dir=run_dir,
            phase="retrain",
            aux_weight=cfg.retrain.auxiliary_weight,
            drop_path=cfg.retrain.drop_path,
            cutout=cfg.retrain.cutout,
            resume=cfg.resume,
            seed=cfg.seed,
            shorten_hint=_shorten_retrain_hint(cfg, net_cfg),
            sinks=report,
        )
        timings["retrain_s"] = clock.stop()
        result.update(
            {
                # None without a validation split: the retrained network was never validated.
                "val_acc": metrics.get("val_acc"),
                "test_acc": metrics["test_acc"],
                "train_acc": metrics["train_acc"],
                "epochs": metrics["epochs"],
            }
        )
    else:
        # No retraining: the search is the run's last phase, and its numbers are the run's
        # (tabular benchmarks report the chosen cell's table entries).
        result["val_acc"] = result.get("search_val_acc")
        result["test_acc"] = result.get("search_test_acc")
    result["wall_s"] = timings
    if world.main:
        write_json_atomic(run_dir / "result.json", result)
    print_summary(result)
    console.print(f"run folder: {run_dir}", markup=False, highlight=False, soft_wrap=True)
    leave()  # the process group a data-parallel run joined
    return numeric_results(result)


def numeric_results(result: dict[str, Any]) -> dict[str, float]:
    """The entries of ``result`` that are numbers (a sweep's candidate objectives), as floats."""
    return {
        key: float(value)
        for key, value in result.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def _summary_value(value: Any) -> str:
    """A value as the summary table shows it."""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    return str(value)


def print_summary(result: dict[str, Any]) -> None:
    """A rich table of the run's result: genotype, size, accuracies, wall time per phase."""
    table = Table(title="nasrun result", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key in (
        "task",
        "space",
        "genotype",
        "params",
        "flops",
        "n_evaluations",
        "search_val_acc",
        "val_acc",
        "test_acc",
    ):
        if result.get(key) is not None:
            table.add_row(key, _summary_value(result[key]))
    for phase, seconds in result.get("wall_s", {}).items():
        table.add_row(f"wall time {phase.removesuffix('_s')}", f"{seconds:.1f} s")
    get_console().print(table)


def _shorten_retrain_hint(cfg: DictConfig, net_cfg: dict[str, Any]) -> str:
    """The overrides that make a retraining short, for the warning about a long one."""
    sizes = " ".join(
        f"retrain.network.{k}=..."
        for k, v in net_cfg.items()
        if isinstance(v, int) and not isinstance(v, bool)
    )
    smaller = f" and a smaller network ({sizes})" if sizes else ""
    return f"fewer epochs (trainer.epochs={max(1, int(cfg.trainer.epochs) // 20)}){smaller}, or retrain.enabled=false"


def _draw(genotype: Genotype, run_dir: Path) -> None:
    """The cells as ``cells.png`` and ``cells.dot``; a plotting failure never costs the run its results."""
    try:
        from nasrun.plots.cell_diagram import plot_cells

        plot_cells(genotype, run_dir / "cells.png")
    except Exception as e:  # noqa: BLE001 - drawing is a convenience, results matter more
        get_console().print(f"[yellow]could not draw the cells: {e}")
