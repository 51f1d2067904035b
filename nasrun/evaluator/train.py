"""Score an architecture by training it: a short proxy schedule with the run's trainer and data.

Each child is built by the space (``space.build_network``), trained with ``Trainer.fit`` for
``epochs`` epochs on the configured data's training split, and scored by its accuracy on the
validation split. The test accuracy is recorded alongside, never used to choose. Results are
cached per architecture, so a repeated query costs nothing.

By default children train one after another in the search process. With ``workers > 1``, the
children a strategy proposes together (``BlackBoxStrategy.ask_batch``) train concurrently in a
pool of spawned processes, each with an equal share of the run's CPU threads (``trainer.threads``;
on a GPU they share the device). Every child trains from the run's seed wherever it runs, so its
score is the one it gets in the search process: bit for bit when both use the same number of CPU
threads (e.g. ``OMP_NUM_THREADS=1``), since a CPU kernel may sum in another order with more
threads. The workers are spawned, so a Python script that runs such a search needs the usual
``if __name__ == "__main__":`` guard (the ``nasrun`` command needs nothing).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from nasrun import UserError
from nasrun.evaluator.base import EvalContext, Evaluation
from nasrun.space.genotype import Genotype
from nasrun.train.measure import count_params
from nasrun.train.threads import apply_threads, resolve_threads

if TYPE_CHECKING:
    from nasrun.data.base import DataModule
    from nasrun.space.base import SearchSpace
    from nasrun.train.trainer import Trainer


class TrainEvaluator:
    """Proxy training of each child network.

    Args:
        epochs: training epochs per child (overrides ``trainer.epochs``).
        network: size arguments for ``space.build_network`` (e.g. ``{channels: 8, cells: 1}`` for
            nb201); empty means the space's own defaults.
        workers: children trained at once, each in its own process (1: one after another, in the
            search process).
    """

    def __init__(
        self,
        epochs: int = 12,  # NAS-Bench-201's short schedule (12 epochs; its full schedule is 200)
        network: dict[str, Any] | None = None,  # size arguments for space.build_network; None: the space's
        workers: int = 1,  # children trained at once in spawned processes (1: in the search process); same scores
    ) -> None:
        if epochs <= 0:
            raise UserError(f"evaluator.epochs must be > 0, got {epochs}")
        if workers < 1:
            raise UserError(f"evaluator.workers must be >= 1, got {workers}")
        self.epochs = epochs
        self.network = dict(network or {})
        self.workers = workers
        self.cache: dict[str, Evaluation] = {}
        self._pool: ProcessPoolExecutor | None = None
        self._pool_ctx: EvalContext | None = None  # the run the pool's workers hold the data of

    def evaluate(self, genotype: Genotype, ctx: EvalContext) -> Evaluation:
        """Train ``genotype``'s network and return its validation and test accuracy (%).

        Raises:
            UserError: no data or trainer in the run, no validation split, or a bad network size.
        """
        key = ctx.space.describe(genotype)
        if key not in self.cache:
            data, trainer = _data_and_trainer(ctx)
            self.cache[key] = _train(ctx.space, genotype, data, trainer, self.epochs, self.network, ctx.seed)
        return self.cache[key]

    def evaluate_many(self, genotypes: Sequence[Genotype], ctx: EvalContext) -> Iterator[Evaluation]:
        """Train the children of ``genotypes`` concurrently (``workers`` at a time); yield their
        evaluations in order, each as soon as it and the ones before it are done.

        Raises:
            UserError: as ``evaluate``; a child's error is raised again here, with its message.
        """
        keys = [ctx.space.describe(g) for g in genotypes]
        todo = {k: g for k, g in zip(keys, genotypes, strict=True) if k not in self.cache}
        futures: dict[str, Future[Evaluation]] = {}
        if self.workers > 1 and len(todo) > 1:
            pool = self._pool_for(ctx)
            futures = {k: pool.submit(_train_in_worker, g.to_dict()) for k, g in todo.items()}
        for key, genotype in zip(keys, genotypes, strict=True):
            if key in futures and key not in self.cache:
                self.cache[key] = futures[key].result()
            yield self.evaluate(genotype, ctx)  # cached by now, unless it trains here

    def close(self) -> None:
        """Stop the worker processes, if any (a later ``evaluate_many`` starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool, self._pool_ctx = None, None

    def _pool_for(self, ctx: EvalContext) -> ProcessPoolExecutor:
        """The worker pool of ``ctx``'s run; the workers receive the data and settings once."""
        if self._pool is None or self._pool_ctx is not ctx:
            self.close()
            data, trainer = _data_and_trainer(ctx)
            # The run's threads (set by the pipeline from trainer.threads), split among the workers.
            threads = resolve_threads(torch.get_num_threads(), workers=self.workers)
            # spawn, not fork: a forked child of a process that has started threads (torch's,
            # rich's) or CUDA can deadlock or fail.
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(ctx.space, data, trainer, self.epochs, self.network, ctx.seed, threads),
            )
            self._pool_ctx = ctx
        return self._pool


def _data_and_trainer(ctx: EvalContext) -> tuple[DataModule, Trainer]:
    data, trainer = ctx.data, ctx.trainer
    if data is None or trainer is None:
        raise UserError("evaluator=train needs data (data=digits, data=cifar10, ...) and a trainer")
    if data.val is None:
        raise UserError("evaluator=train scores children on the validation split: set data.val_portion > 0")
    return data, trainer


def _train(
    space: SearchSpace,
    genotype: Genotype,
    data: DataModule,
    trainer: Trainer,
    epochs: int,
    network: dict[str, Any],
    seed: int,
) -> Evaluation:
    """Build and train one child; the same computation in the search process and in a worker."""
    # Every child starts from the same seed, so a score depends on the architecture and the
    # run's seed only (not on how many children were trained before it, e.g. after a resume).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = space.build_network(
                genotype, num_classes=data.num_classes, in_channels=data.in_channels, **network
            )
        except TypeError as e:
            raise UserError(f"evaluator.network: {e} (space {space.name!r})") from None
        t0 = time.perf_counter()
        metrics = trainer.fit(model, data, epochs=epochs, seed=seed, quiet=True)
    return Evaluation(
        val_acc=float(metrics["val_acc"]),
        test_acc=float(metrics["test_acc"]),
        cost_s=time.perf_counter() - t0,
        extra={"params": count_params(model), "train_acc": float(metrics["train_acc"])},
    )


#: A worker process's share of the run: set once by ``_init_worker``, read by every task.
_WORKER: dict[str, Any] = {}


def _init_worker(
    space: SearchSpace,
    data: DataModule,
    trainer: Trainer,
    epochs: int,
    network: dict[str, Any],
    seed: int,
    threads: int,
) -> None:
    apply_threads(threads)
    _WORKER.update(space=space, data=data, trainer=trainer, epochs=epochs, network=network, seed=seed)


def _train_in_worker(genotype: dict[str, Any]) -> Evaluation:
    w = _WORKER
    return _train(
        w["space"],
        Genotype.from_dict(genotype),
        w["data"],
        w["trainer"],
        w["epochs"],
        w["network"],
        w["seed"],
    )
