"""The typed schemas of every config group, generated from the constructors they configure.

A default is written once: in the signature of the class or function a config group instantiates
(``Trainer``, ``OneShotSearch``, ``cifar10`` ...), next to the paper it comes from. Each schema here
is built from that signature with hydra-zen's ``builds`` (one field per parameter, its type and its
default), so the schema cannot disagree with the constructor. The YAML files in ``conf/<group>/``
start their defaults list with ``<name>_schema`` and then write only what that option chooses
differently (``search=pc_darts``'s partial-channel edges, say); ``tests/config/test_schema.py``
refuses a YAML value that restates a default. ``nasrun ... --cfg job`` prints every value a run uses.

Hydra validates a composed config against its schema, so a misspelt key or a value of the wrong
type stops the run before any data is loaded. Value ranges (``epochs > 0`` ...) are checked by the
constructors, which the pipeline calls before any training starts. Arguments that the pipeline
passes at run time (a search's ``space`` and ``seed``) are left out of the schemas.

The three configs that configure no constructor (the root, ``retrain`` and ``genotype``) are plain
dataclasses below: there too a default is written in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from types import UnionType
from typing import Any, Union, get_args

from hydra.core.config_store import ConfigStore
from hydra_zen import BuildsFn
from omegaconf import MISSING

from nasrun.data.cifar import cifar10
from nasrun.data.digits import digits
from nasrun.data.synthetic import synthetic
from nasrun.evaluator.tabular import TabularEvaluator
from nasrun.evaluator.train import TrainEvaluator
from nasrun.search.blackbox.bo_search import BayesianOptimization
from nasrun.search.blackbox.evolution import RegularizedEvolution
from nasrun.search.blackbox.pnas import PNAS
from nasrun.search.blackbox.random_search import RandomSearch
from nasrun.search.blackbox.reinforce import Reinforce
from nasrun.search.oneshot.enas import ReinforceController
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.search.oneshot.rsps import UniformSampling
from nasrun.search.oneshot.samplers import GumbelMaxST, GumbelSoftmax
from nasrun.search.oneshot.snas import SingleLevel
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.space.nb201 import NB201Space
from nasrun.train.trainer import Trainer


class _Builds(BuildsFn[Any]):
    """hydra-zen's ``builds``, reading ``X | None`` annotations as ``Optional[X]`` (which Hydra checks)."""

    @classmethod
    def _sanitized_type(cls, type_: Any, **kwargs: Any) -> Any:
        if isinstance(type_, UnionType):
            type_ = Union[get_args(type_)]  # noqa: UP007 - Hydra understands typing.Union, not |
        return super()._sanitized_type(type_, **kwargs)


#: What the pipeline passes to a search strategy when it builds it (not set by configs).
SEARCH_RUNTIME_ARGS = ("space", "seed")


def schema_of(
    target: Callable[..., Any], name: str, *, partial: bool = False, runtime: tuple[str, ...] = ()
) -> type:
    """The schema of ``target``'s config: ``_target_`` and one field per parameter, with its default.

    Args:
        target: the class or function that the config group instantiates.
        name: the schema's class name (error messages name it, e.g. ``OneShotSearchConfig``).
        partial: the config builds a ``functools.partial`` (``_partial_: true``) that the pipeline
            completes with the ``runtime`` arguments.
        runtime: parameters the pipeline passes itself; they are not config keys.

    Returns:
        A dataclass type for Hydra's ConfigStore.
    """
    return _Builds.builds(  # type: ignore[no-any-return]
        target,
        populate_full_signature=True,
        zen_partial=True if partial else None,
        zen_exclude=runtime,
        zen_dataclass={"cls_name": name, "module": __name__},
    )


def _search(target: Callable[..., Any], name: str) -> type:
    return schema_of(target, name, partial=True, runtime=SEARCH_RUNTIME_ARGS)


TrainerConfig = schema_of(Trainer, "TrainerConfig")
CifarCellSpaceConfig = schema_of(CifarCellSpace, "CifarCellSpaceConfig")
NB201SpaceConfig = schema_of(NB201Space, "NB201SpaceConfig")
OneShotSearchConfig = _search(OneShotSearch, "OneShotSearchConfig")
RandomSearchConfig = _search(RandomSearch, "RandomSearchConfig")
EvolutionSearchConfig = _search(RegularizedEvolution, "EvolutionSearchConfig")
ReinforceSearchConfig = _search(Reinforce, "ReinforceSearchConfig")
PNASSearchConfig = _search(PNAS, "PNASSearchConfig")
BOSearchConfig = _search(BayesianOptimization, "BOSearchConfig")
# A one-shot search's pieces, placed under search.sampler / search.update by the method's file
# (``- gumbel_max_st_schema@sampler``), so that their keys are typed and shown by --cfg job.
GumbelMaxSTConfig = schema_of(GumbelMaxST, "GumbelMaxSTConfig")
GumbelSoftmaxConfig = schema_of(GumbelSoftmax, "GumbelSoftmaxConfig")
SingleLevelConfig = schema_of(SingleLevel, "SingleLevelConfig")
UniformSamplingConfig = schema_of(UniformSampling, "UniformSamplingConfig")
ReinforceControllerConfig = schema_of(ReinforceController, "ReinforceControllerConfig")
TrainEvaluatorConfig = schema_of(TrainEvaluator, "TrainEvaluatorConfig")
TabularEvaluatorConfig = schema_of(TabularEvaluator, "TabularEvaluatorConfig")
CifarDataConfig = schema_of(cifar10, "CifarDataConfig")  # cifar100 has the same parameters
DigitsDataConfig = schema_of(digits, "DigitsDataConfig")
SyntheticDataConfig = schema_of(synthetic, "SyntheticDataConfig")


class Task(str, Enum):
    nas = "nas"  # search, derive, retrain, evaluate
    retrain = "retrain"  # retrain a given genotype (genotype=NAME or genotype_path=PATH)


@dataclass
class NasrunConfig:
    task: Task = Task.nas  # nas: search then retrain; retrain: retrain genotype=NAME or genotype_path=PATH
    seed: int = 0  # seeds the search, the retraining and the data order
    resume: bool = False  # true: continue the run in hydra.run.dir from its checkpoints
    genotype_path: str | None = None  # a genotype.json to retrain (task=retrain)
    search: Any = None
    space: Any = MISSING
    data: Any = None
    trainer: Any = MISSING
    retrain: Any = None
    evaluator: Any = None
    genotype: Any = None


@dataclass
class RetrainConfig:
    enabled: bool = True  # false: stop after the search (the search's own numbers are the result)
    network: dict[str, Any] = field(default_factory=dict)  # passed to space.build_network (its size)
    auxiliary_weight: float = 0.4  # DARTS (Liu et al. 2019, Sec. 3.3): auxiliary loss weight 0.4
    drop_path: float = 0.2  # DARTS: drop-path probability 0.2, ramped linearly over the epochs
    cutout: int = 16  # DARTS: cutout of 16x16 pixels (DeVries & Taylor 2017)


@dataclass
class GenotypeConfig:
    name: str = ""  # the cell's name in reports
    space: str = "cifar_cell"  # the space the cell belongs to
    normal: list[Any] = field(default_factory=list)  # (op, input) pairs, node by node
    normal_concat: list[int] = field(default_factory=list)  # nodes concatenated into the output
    reduce: list[Any] = field(default_factory=list)
    reduce_concat: list[int] = field(default_factory=list)
    normal_nodes: list[int] = field(default_factory=list)  # edges into each node; empty: the space's (2 each)
    reduce_nodes: list[int] = field(default_factory=list)


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
        "gumbel_max_st_schema": GumbelMaxSTConfig,
        "gumbel_softmax_schema": GumbelSoftmaxConfig,
        "single_level_schema": SingleLevelConfig,
        "uniform_sampling_schema": UniformSamplingConfig,
        "reinforce_controller_schema": ReinforceControllerConfig,
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
