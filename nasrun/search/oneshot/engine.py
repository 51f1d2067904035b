"""The one-shot search engine: a supernet protocol, one search loop, and the hooks methods vary.

Who owns what:

- the **space** describes its supernet (``topology()``), builds the macro skeleton
  (``build_supernet(make_edge=...)``) and derives the discrete cell (``derive(weights)``);
- the **method** chooses how an edge mixes its ops (``search.edge``: a dense weighted sum, partial
  channels, or only the sampled ops), how the edges' weights come from the architecture parameters
  (``search.sampler``: softmax, Gumbel-softmax, Gumbel-max straight-through, with an annealed
  temperature), whether edges are normalised (PC-DARTS's β), how the architecture is updated
  (``search.order``: first order or unrolled second order; ``search.update``: single-level,
  uniform sampling, a REINFORCE controller), and when architecture steps start
  (``search.warmup_epochs``) and the search stops (``search.early_stop``);
- the **loop** here owns epochs, checkpoints and resume, the history file and progress; it calls
  the method's hooks at the start of an epoch (the temperature) and at its end (``EpochHooks``:
  ENAS's controller phase, the sample-and-score derivation of RSPS and ENAS).

``OneShotNetwork`` registers its architecture parameters in a module of their own (``arch``), so
``weight_parameters()`` and ``arch_parameters()`` are disjoint and cover every parameter by
construction, whatever a method adds: no parameter is recognised by its name.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from nasrun import UserError
from nasrun.config.build import chosen
from nasrun.console import get_console, progress_bar
from nasrun.data.base import DataModule, TensorSplit, clamp_batch_size
from nasrun.run_folder import HistoryLog, load_checkpoint, rng_state, set_rng_state
from nasrun.search.base import SearchContext, SearchResult
from nasrun.search.oneshot.darts import DartsStepper
from nasrun.search.oneshot.early_stop import EarlyStop, EarlyStopHook
from nasrun.search.oneshot.edges import DenseEdge
from nasrun.search.oneshot.network import OneShotNetwork, Stage
from nasrun.search.oneshot.plugin import EpochData, EpochStart, OneShotPlugin
from nasrun.search.oneshot.samplers import ArchSampler
from nasrun.search.oneshot.steppers import ArchUpdate, EpochHooks
from nasrun.space.base import EdgeFactory, OneShotSpace, SearchSpace
from nasrun.space.genotype import Genotype
from nasrun.train.distributed import join
from nasrun.train.runtime import epoch_generator
from nasrun.train.trainer import Trainer

#: The progress bar's ``advance(steps, text)``.
Progress = Callable[[int, str], None]


@dataclass
class _EpochPlan:
    """What every epoch of a run uses (``OneShotSearch._epoch_plan``)."""

    data: DataModule
    trainer: Trainer
    w_half: TensorSplit  # the weights' share of the training images
    a_half: TensorSplit | None  # the architecture's share; None: a single-level search
    eval_split: TensorSplit  # what the supernet is scored on after each epoch ...
    eval_name: str  # ... and under which name (val or test)
    batch_size: int
    steps: int  # steps per epoch
    augment: Any  # the data's training augmentation
    score_derived: bool  # score each epoch's cell with the run's evaluator
    checkpoint: Path


@dataclass
class _ResumePoint:
    """Where a run starts: stage, epoch in it, the candidate ops, the history, the checkpoint."""

    stage: int = 0
    stage_epoch: int = 0
    edge_ops: dict[str, list[list[str]]] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    wall: float = 0.0
    state: dict[str, Any] | None = None


class OneShotSearch:
    """The one-shot search loop: epochs of bilevel steps, a genotype derived after every epoch.

    Defaults are the DARTS paper's CIFAR-10 search protocol (Liu et al. 2019, Sec. 3.1 and the
    reference code); ``conf/search/*.yaml`` set each method's. ``budget`` exists only so that the
    black-box strategies' ``search.budget`` composes in a multirun over strategies; a value is
    refused.

    Args:
        space: a space with one-shot support.
        seed: seeds the supernet's initialisation and the data split.
        edge: builds each edge (``nasrun.search.oneshot.edges.DenseEdge`` or ``PartialChannelEdge``).
        edge_normalisation: PC-DARTS's per-edge weights β.
        order: 1 (first order) or 2 (unrolled second order).
        epochs: search epochs.
        warmup_epochs: first epochs that train only the weights (PC-DARTS: 15).
        early_stop: a stopping criterion checked after every epoch that took architecture steps
            (DARTS+), or ``None``. Warm-up epochs are not checked: their cell is the initial one.
        batch_size, train_portion: the batches, and the share of the training images that trains
            the weights (the rest trains the architecture). A single-level update (SNAS) trains
            both on all the training images and ignores ``train_portion``.
        lr, lr_min, momentum, weight_decay, grad_clip, nesterov: the weights' SGD.
        lr_schedule, lr_period, lr_period_mul: the weights' schedule from ``lr`` to ``lr_min``,
            stepped once per epoch: ``cosine`` over ``lr_period`` epochs (``None``: all of them;
            a shorter period swings back up), or ``cosine_restarts`` (SGDR: back to ``lr`` after
            ``lr_period`` epochs, each period ``lr_period_mul`` times the last).
        arch_lr, arch_betas, arch_weight_decay: the architecture's Adam.
        arch_grad_clip: the architecture gradient's norm is clipped at this (P-DARTS); 0: not.
        unrolled_eps: the finite-difference step of the second-order gradient.
        stages: P-DARTS's progressive search: equal-length lists ``layers``, ``epochs``,
            ``warmup_epochs``, ``ops_kept`` (candidate ops per edge in each stage) and
            ``skip_dropout`` (dropout after skip-connects, on P-DARTS's schedule within a stage:
            ``Stage.skip_dropout_at``). Each stage builds a deeper supernet over each edge's
            strongest ops of the stage before (``none`` among them), with new optimisers;
            ``epochs`` must equal the stages' sum. ``None``: one stage.
        max_skips: the derived normal cell keeps at most this many skip-connects (P-DARTS: M = 2).
        derivation: how the cell is derived from the architecture weights: ``darts`` (the
            space's rule: two inputs per node, never ``none``, in the DARTS cell space) or
            ``every_edge`` (each edge's strongest op, ``none`` included, ``none`` edges left out:
            SNAS).
        evaluate_derived: after every epoch, score the derived cell with the run's evaluator (a
            tabular benchmark's look-up, say) and record it in the history as
            ``derived_val_acc`` / ``derived_test_acc`` (the last epoch's also in the result). The
            score never feeds back into the search. ``None``: on when the evaluator is free (a
            look-up table: ``evaluator=tabular``), off otherwise.
        sampler: how the edges' weights are drawn from the alphas (``nasrun.search.oneshot.samplers``:
            GDAS's Gumbel-max straight-through, SNAS's Gumbel-softmax); ``None``: the softmax.
        update: how the architecture is updated, if not by DARTS's bilevel steps
            (``nasrun.search.oneshot.snas.SingleLevel``, ``rsps.UniformSampling``,
            ``enas.ReinforceController``); it checks the other settings when the search is built.
    """

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        edge: EdgeFactory | None = None,  # DARTS: None, the softmax-weighted sum of every op (DenseEdge)
        edge_normalisation: bool = False,  # DARTS: no per-edge weights (PC-DARTS: true)
        order: int = 1,  # 1: first order (xi = 0); 2: unrolled weights + finite-difference Hessian product
        epochs: int = 50,  # DARTS: 50 search epochs
        warmup_epochs: int = 0,  # DARTS: architecture steps from the first epoch (PC-DARTS: 15)
        early_stop: EarlyStop | None = None,  # DARTS: none (DARTS+ stops early)
        batch_size: int = 64,  # DARTS: batch 64
        train_portion: float = 0.5,  # DARTS: half the training images train the weights, half the architecture
        lr: float = 0.025,  # DARTS: weight SGD lr 0.025 ...
        lr_min: float = 0.001,  # ... cosine-annealed to 0.001 (reference code)
        momentum: float = 0.9,  # DARTS: SGD momentum 0.9
        weight_decay: float = 3e-4,  # DARTS: weight decay 3e-4
        grad_clip: float = 5.0,  # DARTS: gradient norm clipped at 5
        nesterov: bool = False,  # DARTS: plain momentum (AutoDL's NAS-Bench-201 recipes: Nesterov)
        lr_schedule: str = "cosine",  # DARTS: one cosine decay over the epochs (ENAS: cosine_restarts)
        lr_period: int | None = None,  # DARTS: None, one cosine over the epochs (ENAS: 10)
        lr_period_mul: int = 1,  # cosine_restarts: each period this times the last (ENAS: 2)
        arch_lr: float = 3e-4,  # DARTS: architecture Adam lr 3e-4
        arch_betas: Sequence[float] = (0.5, 0.999),  # DARTS: Adam betas (0.5, 0.999)
        arch_weight_decay: float = 1e-3,  # DARTS: architecture weight decay 1e-3
        arch_grad_clip: float = 0.0,  # DARTS: the architecture gradient is not clipped (P-DARTS: 5)
        unrolled_eps: float = 0.01,  # DARTS: finite-difference step 0.01 / ||grad L_val|| (second order)
        stages: dict[str, Sequence[Any]] | None = None,  # DARTS: one stage (P-DARTS: three)
        max_skips: int | None = None,  # DARTS: no cap on the normal cell's skip-connects (P-DARTS: 2)
        derivation: str = "darts",  # DARTS (Liu et al. 2019, Sec. 2.4): two strongest non-none inputs per node
        evaluate_derived: bool | None = None,  # None: on when the evaluator is a free look-up table, else off
        sampler: ArchSampler | None = None,  # DARTS: None, the softmax of the alphas on every forward pass
        update: ArchUpdate | None = None,  # DARTS: None, bilevel gradient steps (DartsStepper, search.order)
        plugins: Mapping[str, OneShotPlugin] | None = None,  # DARTS: none (R-DARTS, SDARTS, DrNAS add theirs)
        budget: int | None = None,  # black-box strategies only; see above
    ):
        if budget is not None:
            raise UserError(
                f"search.budget={budget}: a one-shot search has no evaluation budget (it trains a supernet for "
                "search.epochs epochs); the budget is for the black-box strategies (search=random_search, ...)"
            )
        if order not in (1, 2):
            raise UserError(f"search.order={order}: must be 1 (first order) or 2 (second order)")
        if epochs <= 0:
            raise UserError(f"search.epochs={epochs}: must be > 0")
        if not 0 <= warmup_epochs < epochs:
            raise UserError(f"search.warmup_epochs={warmup_epochs}: must be in [0, search.epochs={epochs})")
        if batch_size <= 0:
            raise UserError(f"search.batch_size={batch_size}: must be > 0")
        if not 0.0 < train_portion < 1.0:
            raise UserError(f"search.train_portion={train_portion}: must be in (0, 1)")
        if arch_grad_clip < 0:
            raise UserError(f"search.arch_grad_clip={arch_grad_clip}: must be >= 0 (0: no clipping)")
        if lr_schedule not in ("cosine", "cosine_restarts"):
            raise UserError(f"search.lr_schedule={lr_schedule!r}: must be cosine or cosine_restarts")
        if lr_period is not None and lr_period < 1:
            raise UserError(f"search.lr_period={lr_period}: must be >= 1 (or null: the search's epochs)")
        if lr_period_mul < 1:
            raise UserError(f"search.lr_period_mul={lr_period_mul}: must be >= 1")
        if nesterov and not momentum > 0:
            raise UserError(f"search.nesterov=true needs search.momentum > 0, got {momentum}")
        if len(arch_betas) != 2:
            raise UserError(f"search.arch_betas={list(arch_betas)}: needs two values")
        if not isinstance(space, OneShotSpace):
            raise UserError(f"one-shot search needs a space with a supernet; space {space.name!r} has none")
        self.stages = self._plan(stages, space, epochs, warmup_epochs)
        topo = space.topology()
        if max_skips is not None and topo.kept_inputs is None:
            raise UserError(
                f"search.max_skips={max_skips}: space {space.name!r} keeps every edge of its cell, so the "
                "cap on the normal cell's skip-connects does not apply (set search.max_skips=null)"
            )
        if derivation not in ("darts", "every_edge"):
            raise UserError(f"search.derivation={derivation!r}: must be darts or every_edge")
        if max_skips is not None and derivation != "darts":
            raise UserError(
                f"search.max_skips={max_skips}: the skip-connect cap edits DARTS's derivation, not "
                f"search.derivation={derivation} (set search.max_skips=null)"
            )
        self.derivation = derivation
        kept_edges = (topo.kept_inputs or 0) * len(topo.node_slices())
        if max_skips is not None and not 0 <= max_skips <= kept_edges:
            raise UserError(
                f"search.max_skips={max_skips}: must be in [0, {kept_edges}], the normal cell's edges"
            )
        self.max_skips = max_skips
        self.evaluate_derived = evaluate_derived
        self.space: OneShotSpace = space
        self.seed = seed
        self.make_edge: EdgeFactory = edge if edge is not None else DenseEdge
        self.edge_normalisation = edge_normalisation
        self.order = order
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.batch_size = batch_size
        self.train_portion = train_portion
        self.opt_args = dict(
            lr=lr,
            lr_min=lr_min,
            momentum=momentum,
            weight_decay=weight_decay,
            grad_clip=grad_clip,
            nesterov=nesterov,
            lr_schedule=lr_schedule,
            lr_period=lr_period,
            lr_period_mul=lr_period_mul,
            arch_lr=arch_lr,
            arch_betas=arch_betas,
            arch_weight_decay=arch_weight_decay,
            arch_grad_clip=arch_grad_clip,
            unrolled_eps=unrolled_eps,
        )
        if order == 2 and sampler is not None and update is None:
            raise UserError(
                f"search.order=2: the sampler ({type(sampler).__name__}) draws fresh random weights on every "
                "forward pass, so the unrolled step's finite difference would compare different cells; "
                "use search.order=1"
            )
        self.sampler = sampler
        self.update = update
        if update is not None:
            update.check(self)
        # The loop's plug-ins, in a fixed order: the early-stop criterion, then the method's by name.
        self.plugins: dict[str, OneShotPlugin] = {}
        if early_stop is not None:
            self.plugins["early_stop"] = EarlyStopHook(early_stop)
        for name, plugin in sorted((plugins or {}).items()):
            if not isinstance(plugin, OneShotPlugin):
                raise UserError(
                    f"search.plugins.{name}: {type(plugin).__name__} is not a one-shot plug-in "
                    "(a subclass of nasrun.search.oneshot.plugin.OneShotPlugin)"
                )
            self.plugins[name] = plugin
        restoring = [
            n for n, p in self.plugins.items() if type(p).result_epoch is not OneShotPlugin.result_epoch
        ]
        if max_skips is not None and restoring:
            raise UserError(
                f"search.max_skips={max_skips}: search.plugins.{restoring[0]} picks an earlier epoch's cell, "
                "and the skip-connect cap edits the last epoch's (set search.max_skips=null)"
            )
        for plugin in self.plugins.values():
            plugin.check(self)

    @staticmethod
    def _plan(
        stages: dict[str, Sequence[Any]] | None, space: SearchSpace, epochs: int, warmup_epochs: int
    ) -> list[Stage]:
        """The search's stages, checked (one stage unless ``stages`` is given)."""
        if stages is None:
            return [
                Stage(
                    layers=None, epochs=epochs, warmup_epochs=warmup_epochs, ops_kept=None, skip_dropout=0.0
                )
            ]
        keys = ("layers", "epochs", "warmup_epochs", "ops_kept", "skip_dropout")
        missing = [k for k in keys if k not in stages]
        if missing or set(stages) - set(keys):
            raise UserError(f"search.stages: needs exactly the lists {', '.join(keys)}")
        lengths = {k: len(stages[k]) for k in keys}
        if len(set(lengths.values())) != 1 or not lengths["layers"]:
            raise UserError(
                "search.stages: the lists must have one entry per stage, got "
                + ", ".join(f"{k} {n}" for k, n in lengths.items())
            )
        plan = [Stage(*values) for values in zip(*(stages[k] for k in keys), strict=True)]
        if sum(st.epochs for st in plan) != epochs:
            raise UserError(
                f"search.epochs={epochs}: must equal the stages' epochs, {sum(st.epochs for st in plan)}"
            )
        n_ops = len(space.topology().ops) if isinstance(space, OneShotSpace) else 0
        if (
            isinstance(space, OneShotSpace)
            and "layers" not in inspect.signature(space.build_supernet).parameters
        ):
            deeper = [st.layers for st in plan if st.layers is not None]
            if deeper:
                # Said as the user chose it (search=p_darts), not as the key that holds the depths.
                who = chosen("search") or f"search.stages.layers={deeper}"
                raise UserError(
                    f"{who} needs a space of variable depth (its stages grow the supernet to "
                    f"{', '.join(map(str, deeper))} cells); space={space.name} has a fixed depth: "
                    "use a space such as space=cifar_cell, or set search.stages.layers to null"
                )
        for i, st in enumerate(plan):
            if not 0 <= st.warmup_epochs < st.epochs:
                raise UserError(
                    f"search.stages: stage {i + 1} has warmup_epochs={st.warmup_epochs} of {st.epochs}"
                )
            most = (plan[i - 1].ops_kept or n_ops) if i else n_ops
            if st.ops_kept is not None and not 1 <= st.ops_kept <= most:
                raise UserError(
                    f"search.stages.ops_kept: stage {i + 1} keeps {st.ops_kept} ops (must not grow, at least 1)"
                )
        return plan

    def build_network(
        self,
        num_classes: int,
        in_channels: int,
        stage: int = 0,
        edge_ops: dict[str, list[list[str]]] | None = None,
    ) -> OneShotNetwork:
        """The supernet of ``stage`` with its architecture parameters, initialised from the seed."""
        torch.manual_seed(self.seed + stage)
        return OneShotNetwork(
            self.space,
            num_classes,
            in_channels,
            self.make_edge,
            edge_normalisation=self.edge_normalisation,
            edge_ops=edge_ops,
            layers=self.stages[stage].layers,
            sampler=self.sampler,
            derivation=self.derivation,
        )

    def make_stepper(
        self,
        num_classes: int,
        in_channels: int,
        trainer: Trainer,
        stage: int = 0,
        edge_ops: dict[str, list[list[str]]] | None = None,
    ) -> DartsStepper:
        network = self.build_network(num_classes, in_channels, stage, edge_ops)
        epochs = self.stages[stage].epochs
        darts: dict[str, Any] = {"order": self.order, "epochs": epochs, **self.opt_args}
        if self.update is not None:
            stepper = self.update.stepper(network, trainer, seed=self.seed + stage, **darts)
        else:
            stepper = DartsStepper(network, trainer, **darts)
        stepper.plugins = list(self.plugins.values())
        for plugin in stepper.plugins:
            plugin.attach(stepper)
        return stepper

    def data_parallel_refusal(self, evaluator: Any = None) -> str | None:
        """Why this search cannot run data-parallel (several processes), or ``None`` if it can.

        The DARTS steps (first and second order, every architecture distribution) and the
        single-level update average their gradients over the processes; the cell-sampling updates
        (ENAS, RSPS), plug-ins that attack each process's share of a batch and scoring each epoch's
        cell with ``evaluator`` do not yet.
        """
        if self.update is not None and not getattr(self.update, "data_parallel", False):
            return f"search.update={type(self.update).__name__} runs in one process"
        for name, plugin in self.plugins.items():
            if not plugin.data_parallel:
                return f"search.plugins.{name}={type(plugin).__name__} runs in one process"
        if self._scores_derived(evaluator):
            return "scoring each epoch's cell (search.evaluate_derived) runs in one process"
        return None

    def _scores_derived(self, evaluator: Any) -> bool:
        """Whether each epoch's derived cell is scored: ``evaluate_derived``, else when ``evaluator`` is free."""
        if self.evaluate_derived is not None:
            return self.evaluate_derived
        return bool(getattr(evaluator, "free", False))

    @property
    def single_level(self) -> bool:
        """Whether one loss on the same batches trains weights and architecture (SNAS)."""
        return bool(getattr(self.update, "single_level", False))

    def split(self, train: TensorSplit) -> tuple[TensorSplit, TensorSplit | None]:
        """The weights' share and the architecture's share of the training data.

        A single-level update trains both on every training image: the weights' share is all of
        them and there is no architecture share (SNAS-Series ``SNAS/train_search.py``:
        ``init_loaddata`` loads the whole CIFAR-10 training set into one queue).
        """
        if self.single_level:
            return train, None
        n = len(train)
        n_w = int(n * self.train_portion)
        if n_w < 1 or n - n_w < 1:
            raise UserError(
                f"search.train_portion={self.train_portion}: leaves an empty half of {n} training images"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return train.subset(perm[:n_w]), train.subset(perm[n_w:])

    def run(self, ctx: SearchContext) -> SearchResult:
        """The loop's skeleton: stages of epochs; each epoch starts, steps, ends, is recorded, may stop."""
        if ctx.data is None or ctx.trainer is None:
            raise UserError("a one-shot search needs data and a trainer")
        world = ctx.trainer.world
        join(world, ctx.trainer.device)  # data-parallel (``data_parallel_refusal`` said it can)
        plan = self._epoch_plan(ctx)
        at = self._resume_point(ctx)
        log = HistoryLog(
            ctx.run_dir / "history.jsonl",
            at.records,
            [ctx.trainer.scalar_log(ctx.run_dir, "search"), *ctx.sinks],
            write=world.main,  # data-parallel: the first process writes for all
        )
        stopped = self._stop_reason(log.records)
        done = sum(st.epochs for st in self.stages[: at.stage]) + at.stage_epoch
        stage, stage_epoch, edge_ops, wall, state = at.stage, at.stage_epoch, at.edge_ops, at.wall, at.state
        network: OneShotNetwork | None = None
        with progress_bar("search", total=self.epochs * plan.steps, completed=done * plan.steps) as advance:
            while stage < len(self.stages) and stopped is None:
                stepper = self.make_stepper(
                    plan.data.num_classes, plan.data.in_channels, plan.trainer, stage, edge_ops
                )
                network = stepper.module  # type: ignore[assignment]
                assert network is not None
                if state is not None:  # resuming inside (or at the end of) this stage
                    self._load(stepper, state)
                    state = None
                for epoch in range(stage_epoch, self.stages[stage].epochs):
                    t0 = time.perf_counter()
                    start = EpochStart(
                        epoch=done,
                        epochs=self.epochs,
                        stage=stage,
                        stage_epoch=epoch,
                        arch_steps=epoch >= self.stages[stage].warmup_epochs,
                    )
                    self._start_epoch(stepper, network, start)
                    train_loss, train_acc = self._steps(stepper, plan, start, advance)
                    done += 1
                    record = self._end_epoch(stepper, network, plan, start, ctx, advance)
                    wall += time.perf_counter() - t0
                    record = {
                        "epoch": done,
                        "lr": stepper.w_opt.param_groups[0]["lr"],
                        "train_loss": train_loss,
                        "train_acc": train_acc,
                        **record,
                        "wall_s": wall,
                    }
                    stopped = self._stop_reason([*log.records, record])
                    if stopped is not None:
                        record["stopped"] = stopped
                    # The checkpoint first, then the epoch's line (HistoryLog.commit): a kill in
                    # between leaves no line that the checkpoint lacks.
                    saved = {  # not `state`: that is the resume point's, read when a stage starts
                        "stepper": stepper.state_dict(),
                        "plugins": {n: p.state_dict() for n, p in self.plugins.items()},
                        "rng": rng_state(),
                        "stage": stage,
                        "stage_epoch": epoch + 1,
                        "edge_ops": network.edge_ops,
                        "epoch": done,
                        "wall_s": wall,
                    }
                    world.write_together(
                        partial(log.commit, [record], plan.checkpoint, saved), ctx.trainer.device
                    )
                    self._print_epoch(record, plan, start, time.perf_counter() - t0)
                    if stopped is not None:
                        get_console().print(f"search stopped after epoch {done}: {stopped}")
                        break
                if stopped is None and stage + 1 < len(self.stages):
                    # The next stage searches each edge's strongest ops of this one, `none` included
                    # where it is among them (derivation skips it at the end).
                    kept = self.stages[stage + 1].ops_kept
                    edge_ops = network.pruned_ops(kept) if kept is not None else network.edge_ops
                stage, stage_epoch = stage + 1, 0
        return self._result(ctx, log.records, network, plan.checkpoint)

    # -- the skeleton's parts -----------------------------------------------------------------------
    def _epoch_plan(self, ctx: SearchContext) -> _EpochPlan:
        """What every epoch of the run uses: the data's halves, the batch size, the scoring split."""
        assert ctx.data is not None and ctx.trainer is not None
        data, trainer = ctx.data, ctx.trainer
        w_half, a_half = self.split(data.train)
        # The split the supernet is scored on after each epoch: the architecture's half; a
        # single-level search has none and uses the data's validation split, else the test set
        # (reported as test accuracy, as SNAS's reference reports its search on the test set).
        eval_split, eval_name = (a_half, "val") if a_half is not None else (data.val, "val")
        if eval_split is None:
            eval_split, eval_name = data.test, "test"
        # An epoch passes over the weights' whole share when no step of the method reads a
        # validation batch (RSPS, ENAS: ``reads_val_batches = False``) or when a single-level
        # method trains on all the training images (SNAS: no second half); else it zips the
        # halves, stopping at the shorter.
        weights_only = getattr(self.update, "reads_val_batches", True) is False
        n_half = len(w_half) if a_half is None or weights_only else min(len(w_half), len(a_half))
        batch_size = clamp_batch_size(
            self.batch_size,
            n_half,
            "search.batch_size",
            "training images"
            if a_half is None
            else "images in the weights' share"
            if weights_only
            else "images in each half of the search data",
        )
        score_derived = self._scores_derived(ctx.evaluator)
        return _EpochPlan(
            data=data,
            trainer=trainer,
            w_half=w_half,
            a_half=a_half,
            eval_split=eval_split,
            eval_name=eval_name,
            batch_size=batch_size,
            steps=-(-n_half // batch_size),
            augment=data.augment(),
            score_derived=score_derived,
            checkpoint=ctx.checkpoint_dir / "search.pt",
        )

    def _resume_point(self, ctx: SearchContext) -> _ResumePoint:
        """Where the run starts: from scratch, or where the checkpoint left it."""
        ckpt = ctx.checkpoint_dir / "search.pt"
        if not (ctx.resume and ckpt.is_file()):
            return _ResumePoint()
        state = load_checkpoint(ckpt)
        return _ResumePoint(
            stage=state.get("stage", 0),
            stage_epoch=state["stage_epoch"] if "stage_epoch" in state else state["epoch"],
            edge_ops=state.get("edge_ops"),
            records=state["history"],
            wall=state["wall_s"],
            state=state,
        )

    def _load(self, stepper: DartsStepper, state: dict[str, Any], rng: bool = True) -> None:
        """The plug-ins', the stepper's and (``rng``) the random generators' state from a checkpoint.

        The plug-ins load first: one that reshapes the supernet as the search goes (DrNAS's widening)
        gives the freshly built supernet the checkpoint's shapes before its weights load.
        """
        saved = state.get("plugins", {})
        for name, plugin in self.plugins.items():
            if name in saved:
                plugin.load_state_dict(saved[name])
        stepper.load_state_dict(state["stepper"])
        if rng:
            set_rng_state(state["rng"])

    def _start_epoch(self, stepper: DartsStepper, network: OneShotNetwork, start: EpochStart) -> None:
        """The epoch's schedules: the stage's skip-connect dropout, the sampler's temperature, the plug-ins'."""
        stepper.model.train()
        network.set_skip_dropout(self.stages[start.stage].skip_dropout_at(start.stage_epoch))
        network.start_epoch(start.epoch, self.epochs)  # the sampler's temperature, by the search's epoch
        for plugin in self.plugins.values():
            plugin.start_epoch(stepper, start)

    def _steps(
        self, stepper: DartsStepper, plan: _EpochPlan, start: EpochStart, advance: Progress
    ) -> tuple[float, float]:
        """The epoch's steps (each advancing the progress bar); returns the weight steps' mean loss and accuracy."""
        loss_sum, correct, n = 0.0, 0, 0
        gen_w, gen_a = epoch_generator(self.seed, start.epoch, 0), epoch_generator(self.seed, start.epoch, 1)
        train_it = plan.trainer.batches(plan.w_half, plan.batch_size, gen_w, plan.augment)
        # A validation batch is drawn (augmented, moved to the device) only for a step that reads
        # it; the epoch keeps its number of steps either way.
        if plan.a_half is not None and stepper.reads_val_batch(start.arch_steps):
            val_it = plan.trainer.batches(plan.a_half, plan.batch_size, gen_a, plan.augment)
            pairs: Iterator[tuple[Any, Any]] = zip(train_it, val_it)
        else:
            pairs = ((b, (None, None)) for b in itertools.islice(train_it, plan.steps))
        world = plan.trainer.world
        for i, ((xt, yt), (xv, yv)) in enumerate(pairs):
            if world.active:  # this process's share of the global batches
                train = world.share(xt, yt)
                val = (None, None) if xv is None else world.share(xv, yv)
                if train is None or val is None:
                    continue  # a last batch too small to give every process an image
                (xt, yt), (xv, yv) = train, val
                # The step's random draws (samplers, dropout) the same on every process, whatever
                # the size of its share.
                torch.manual_seed(self.seed * 1_000_003 + start.epoch * 10_007 + i)
            loss, c = stepper.step(xt, yt, xv, yv, arch_step=start.arch_steps)
            loss_sum += loss * yt.numel()
            correct += c
            n += int(yt.numel())
            advance(1, f"epoch {start.epoch + 1} loss {loss_sum / n:.3f}")
        stepper.sched.step()
        if world.active:
            loss_sum, correct_f, n_f = world.totals([loss_sum, correct, n], plan.trainer.device)
            correct, n = int(correct_f), int(n_f)
        return loss_sum / max(n, 1), 100.0 * correct / max(n, 1)

    def _end_epoch(
        self,
        stepper: DartsStepper,
        network: OneShotNetwork,
        plan: _EpochPlan,
        start: EpochStart,
        ctx: SearchContext,
        advance: Progress,
    ) -> dict[str, Any]:
        """After the steps: the update's and the plug-ins' work, the derived cell, its scores."""
        extra: dict[str, Any] = {}
        derived: Genotype | None = None

        def status(text: str, e: int = start.epoch + 1) -> None:
            advance(0, f"epoch {e} {text}")

        epoch_data = EpochData(
            split=plan.a_half if plan.a_half is not None else plan.w_half,
            batch_size=plan.batch_size,
            runtime=plan.trainer,
            seed=self.seed,
            epoch=start.epoch,
            augment=plan.augment,
            status=status,
            last=start.epoch + 1 == self.epochs,
        )
        if isinstance(stepper, EpochHooks):
            assert plan.a_half is not None  # cell-sampling updates are never single-level
            extra = stepper.end_epoch(epoch_data, start.arch_steps)
            derived = stepper.derive(epoch_data)  # the network then runs the derived cell
        for plugin in self.plugins.values():
            extra.update(plugin.end_epoch(stepper, epoch_data, start.arch_steps))
        # Data-parallel: rank 0's BatchNorm statistics everywhere, then each process scores its share.
        plan.trainer.synced(stepper.module)
        eval_loss, eval_acc = plan.trainer.evaluate(stepper.model, plan.eval_split)
        val = plan.eval_name == "val"
        record: dict[str, Any] = {
            "val_loss": eval_loss if val else None,
            "val_acc": eval_acc if val else None,
            **({} if val else {"test_loss": eval_loss, "test_acc": eval_acc}),
            "arch_steps": start.arch_steps,
            "alphas": network.arch_weights(),
            "genotype": (derived if derived is not None else network.genotype()).to_dict(),
        }
        record.update(extra)
        if network.sampler is not None:
            record["tau"] = network.sampler.tau
        if plan.score_derived and ctx.evaluator is not None:
            scored = ctx.evaluator.evaluate(Genotype.from_dict(record["genotype"]), ctx)
            record["derived_val_acc"], record["derived_test_acc"] = scored.val_acc, scored.test_acc
        if len(self.stages) > 1:
            record["stage"] = start.stage + 1
            record["edge_ops"] = network.edge_ops
            record["skip_dropout"] = self.stages[start.stage].skip_dropout_at(start.stage_epoch)
        else:
            record["ops"] = list(network.topology.ops)
        return record

    def _print_epoch(
        self, record: dict[str, Any], plan: _EpochPlan, start: EpochStart, seconds: float
    ) -> None:
        acc = record["val_acc"] if plan.eval_name == "val" else record["test_acc"]
        get_console().print(
            f"search epoch {record['epoch']}/{self.epochs} loss {record['train_loss']:.4f} "
            f"train_acc {record['train_acc']:.2f} {plan.eval_name}_acc {acc:.2f} ({seconds:.1f}s)"
            + ("" if start.arch_steps else " [weights only]")
        )

    def _result(
        self,
        ctx: SearchContext,
        records: Sequence[dict[str, Any]],
        network: OneShotNetwork | None,
        ckpt: Path,
    ) -> SearchResult:
        """The search's cell: the last epoch's, or the epoch a plug-in restores (stop-and-restore)."""
        last = records[-1]
        chosen, by = last, None
        for name, plugin in self.plugins.items():
            epoch = plugin.result_epoch(records)
            if epoch is not None:
                if not 1 <= epoch <= len(records):
                    raise RuntimeError(f"search.plugins.{name} picked epoch {epoch} of {len(records)}")
                chosen, by = records[epoch - 1], name
                break
        genotype = Genotype.from_dict(chosen["genotype"])
        metrics: dict[str, Any] = {
            "search_val_acc": chosen["val_acc"],
            "search_wall_s": last["wall_s"],
            "search_epochs": last["epoch"],
        }
        if by is not None:
            metrics["search_result_epoch"] = {"epoch": chosen["epoch"], "chosen_by": by}
        if self.max_skips is not None:
            if network is None:  # a finished search resumed: rebuild its last network for the rule
                network = self._final_network(ctx, ckpt)
            genotype = network.genotype(max_skips=self.max_skips)
            metrics["search_max_skips"] = self.max_skips
        if "stopped" in last:
            metrics["search_stopped"] = {"epoch": last["epoch"], "reason": last["stopped"]}
        if "derived_val_acc" in chosen and self.max_skips is None:  # the scored cell is the result
            metrics["derived_val_acc"] = chosen["derived_val_acc"]
            metrics["derived_test_acc"] = chosen["derived_test_acc"]
        return SearchResult(genotype=genotype, metrics=metrics)

    def _stop_reason(self, records: Sequence[dict[str, Any]]) -> str | None:
        """Why the search stops after the last of ``records`` (the first plug-in that says so), or ``None``."""
        if not records:
            return None
        for plugin in self.plugins.values():
            reason = plugin.stop(records)
            if reason is not None:
                return reason
        return None

    def _final_network(self, ctx: SearchContext, ckpt: Path) -> OneShotNetwork:
        """The last stage's supernet as the checkpoint holds it."""
        state = load_checkpoint(ckpt)
        assert ctx.data is not None and ctx.trainer is not None
        stepper = self.make_stepper(
            ctx.data.num_classes,
            ctx.data.in_channels,
            ctx.trainer,
            state.get("stage", 0),
            state.get("edge_ops"),
        )
        self._load(stepper, state, rng=False)
        return stepper.module  # type: ignore[return-value]
