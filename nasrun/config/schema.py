"""Dataclass schemas for every config group.

Each YAML file in ``conf/<group>/`` starts its defaults list with ``<name>_schema``, so Hydra
validates it against the dataclass at compose time: a misspelt key or a value of the wrong type
stops the run before any data is loaded. (``conf/evaluator/tabular.yaml`` is a global config, so
it places its schema with ``tabular_schema@evaluator``.) Value ranges (``epochs > 0`` ...) are
checked by the constructors, which the pipeline calls before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Task(str, Enum):
    nas = "nas"  # search, derive, retrain, evaluate
    retrain = "retrain"  # retrain a given genotype (genotype=NAME or genotype_path=PATH)


@dataclass
class NasrunConfig:
    task: Task = Task.nas
    seed: int = 0
    resume: bool = False
    genotype_path: str | None = None
    search: Any = None
    space: Any = MISSING
    data: Any = None
    trainer: Any = MISSING
    retrain: Any = None
    evaluator: Any = None
    genotype: Any = None


@dataclass
class TrainerConfig:
    _target_: str = "nasrun.train.trainer.Trainer"
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    eval_batch_size: int = 256
    threads: Any = "auto"  # "auto" or a positive int (OmegaConf has no int | str); checked by Trainer


@dataclass
class RetrainConfig:
    enabled: bool = True
    network: dict[str, Any] = field(default_factory=dict)
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2
    cutout: int = 16


@dataclass
class CifarCellSpaceConfig:
    _target_: str = "nasrun.space.cifar_cell.CifarCellSpace"
    layers: int = 8
    channels: int = 16
    nodes: int = 4
    stem_multiplier: int = 3
    ops: list[str] = field(default_factory=list)


@dataclass
class OneShotSearchConfig:
    _target_: str = "nasrun.search.oneshot.OneShotSearch"
    _partial_: bool = True
    edge: Any = None
    edge_normalisation: bool = False
    order: int = 1
    epochs: int = 50
    warmup_epochs: int = 0
    early_stop: Any = None
    stages: Any = None
    max_skips: int | None = None
    evaluate_derived: bool = False
    batch_size: int = 64
    train_portion: float = 0.5
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    arch_weight_decay: float = 1e-3
    unrolled_eps: float = 0.01
    # The black-box strategies' budget, declared here so that `nasrun -m search=evolution,bo
    # search.budget=30` composes: a multirun first composes the default search=darts. A one-shot
    # search refuses any value but null (it runs search.epochs epochs).
    budget: int | None = None


@dataclass
class RandomSearchConfig:
    _target_: str = "nasrun.search.random_search.RandomSearch"
    _partial_: bool = True
    budget: int = 100


@dataclass
class EvolutionSearchConfig:
    _target_: str = "nasrun.search.evolution.RegularizedEvolution"
    _partial_: bool = True
    budget: int = 100
    population: int = 20
    sample: int = 5


@dataclass
class ReinforceSearchConfig:
    _target_: str = "nasrun.search.reinforce.Reinforce"
    _partial_: bool = True
    budget: int = 100
    batch: int = 5
    hidden: int = 64
    lr: float = 0.01
    baseline_decay: float = 0.9
    entropy_weight: float = 1e-4


@dataclass
class PNASSearchConfig:
    _target_: str = "nasrun.search.pnas.PNAS"
    _partial_: bool = True
    budget: int = 100
    beam: int = 256
    k: int = 10
    completions: int = 16
    members: int = 5


@dataclass
class BOSearchConfig:
    _target_: str = "nasrun.search.bo_search.BayesianOptimization"
    _partial_: bool = True
    budget: int = 100
    n_init: int = 10
    n_parents: int = 10
    n_random: int = 100
    refit_every: int = 10


@dataclass
class NB201SpaceConfig:
    _target_: str = "nasrun.space.nb201.NB201Space"
    channels: int = 16
    cells: int = 5


@dataclass
class TrainEvaluatorConfig:
    _target_: str = "nasrun.evaluator.train.TrainEvaluator"
    epochs: int = 12
    network: dict[str, Any] = field(default_factory=dict)
    workers: int = 1


@dataclass
class TabularEvaluatorConfig:
    _target_: str = "nasrun.evaluator.tabular.TabularEvaluator"
    table: str = MISSING


@dataclass
class CifarDataConfig:
    _target_: str = "nasrun.data.cifar.cifar10"
    root: str = "~/.cache/nasrun"
    download: bool = True
    val_portion: float = 0.0
    split_seed: int = 0
    limit: int | None = None


@dataclass
class DigitsDataConfig:
    _target_: str = "nasrun.data.digits.digits"
    image_size: int = 16
    val_portion: float = 0.2
    test_portion: float = 0.2
    split_seed: int = 0
    crop_padding: int = 1


@dataclass
class SyntheticDataConfig:
    _target_: str = "nasrun.data.synthetic.synthetic"
    n_train: int = 512
    n_test: int = 128
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    val_portion: float = 0.2
    seed: int = 0


@dataclass
class GenotypeConfig:
    name: str = ""
    space: str = "cifar_cell"
    normal: list[Any] = field(default_factory=list)
    normal_concat: list[int] = field(default_factory=list)
    reduce: list[Any] = field(default_factory=list)
    reduce_concat: list[int] = field(default_factory=list)


SCHEMAS: dict[str, dict[str, Any]] = {
    "trainer": {"trainer_schema": TrainerConfig},
    "retrain": {"retrain_schema": RetrainConfig},
    "space": {"cifar_cell_schema": CifarCellSpaceConfig, "nb201_schema": NB201SpaceConfig},
    "search": {
        "oneshot_schema": OneShotSearchConfig,
        "random_search_schema": RandomSearchConfig,
        "evolution_schema": EvolutionSearchConfig,
        "reinforce_schema": ReinforceSearchConfig,
        "pnas_schema": PNASSearchConfig,
        "bo_schema": BOSearchConfig,
    },
    "evaluator": {"train_schema": TrainEvaluatorConfig, "tabular_schema": TabularEvaluatorConfig},
    "data": {
        "cifar_schema": CifarDataConfig,
        "digits_schema": DigitsDataConfig,
        "synthetic_schema": SyntheticDataConfig,
    },
    "genotype": {"genotype_schema": GenotypeConfig},
}


def register_configs(extra: dict[str, dict[str, Any]] | None = None) -> None:
    """Store the root schema and every group schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=NasrunConfig)
    for group, nodes in {**SCHEMAS, **(extra or {})}.items():
        for name, node in nodes.items():
            cs.store(group=group, name=name, node=node)
