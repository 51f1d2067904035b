"""The typed schemas of every config group, read from the signatures of the constructors they configure.

A default is written once: in the signature of the class or function a config group instantiates
(``Trainer``, ``OneShotSearch``, ``cifar10`` ...), next to the paper it comes from. Each schema here
is built from that signature (one field per parameter, its type and its default), so the schema
cannot disagree with the constructor. The YAML files in ``conf/<group>/`` start their defaults list
with ``<name>_schema`` and then write only what that option chooses differently (``search=pc_darts``'s
partial-channel edges, say); ``tests/config/test_schema.py`` refuses a YAML value that restates a
default. ``nasrun ... --cfg job`` prints every value a run uses.

The signatures are read from the source, without importing the modules (which import torch), so
that composing a config (``nasrun --help``, ``--cfg job``) stays fast: the module is located with
``importlib`` (``PathFinder``, which executes nothing), parsed with ``ast``, and the constructor's
parameters give the fields. Annotations (strings, under ``from __future__ import annotations``)
become the types Hydra checks: ``int``, ``float``, ``bool``, ``str``, ``X | None`` (Optional),
``list[X]``, ``dict[K, V]``; any other annotation (``Sequence[float]``, a union, a class) becomes
``Any``. Defaults must be literals (``ast.literal_eval``); a tuple default becomes a list.
``tests/config/test_schema.py`` checks each schema against the imported constructor's signature.

One-shot pieces are discovered, not listed: every module in ``nasrun/search/oneshot/`` is parsed
and these public classes get a schema ``<snake_case_name>_schema`` in group ``search`` (the
``<Name>Config`` class is an attribute of this module):

* plug-ins: classes deriving from ``OneShotPlugin``, directly or through other classes of that
  folder (``search.plugins.<name>``, ``search.early_stop``);
* architecture distributions: classes with the ``ArchSampler`` methods ``sample`` and ``mode``,
  defined or inherited within the folder (``search.sampler``: ``gumbel_max_st_schema``);
* updates: classes with a ``stepper`` method (``search.update``: ``single_level_schema``).

A new method's file thus needs no edit here. Protocols, private classes (``_Name``) and the engine's
own classes (``OneShotSearch``, listed explicitly) are not discovered.

Hydra validates a composed config against its schema, so a misspelt key or a value of the wrong
type stops the run before any data is loaded. Value ranges (``epochs > 0`` ...) are checked by the
constructors, which the pipeline calls before any training starts. Arguments that the pipeline
passes at run time (a search's ``space`` and ``seed``) are left out of the schemas.

The three configs that configure no constructor (the root, ``retrain`` and ``genotype``) are plain
dataclasses below: there too a default is written in one place.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any, Optional, get_args

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

#: What the pipeline passes to a search strategy when it builds it (not set by configs).
SEARCH_RUNTIME_ARGS = ("space", "seed")

_SCALARS: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}
_ONESHOT = "nasrun.search.oneshot"
_ONESHOT_OWN = {"OneShotSearch", "OneShotPlugin"}  # the engine's classes, not plug-ins


def module_source(module: str) -> Path:
    """The source file of ``module``, found without executing it or its packages' ``__init__``."""
    path: list[str] | None = None
    spec = None
    for depth, part in enumerate(module.split(".")):
        spec = PathFinder.find_spec(part, path)
        if spec is None or (depth < module.count(".") and not spec.submodule_search_locations):
            raise ModuleNotFoundError(f"no module {module!r}")
        path = list(spec.submodule_search_locations or [])
    assert spec is not None and spec.origin is not None
    return Path(spec.origin)


@cache
def _module_ast(module: str) -> ast.Module:
    path = module_source(module)
    return ast.parse(path.read_text(), filename=str(path))


def _top_level(module: str) -> dict[str, ast.ClassDef | ast.FunctionDef]:
    defs = (ast.ClassDef, ast.FunctionDef)
    return {n.name: n for n in _module_ast(module).body if isinstance(n, defs)}


def _annotation_type(node: ast.expr | None) -> Any:
    """The type Hydra checks for an annotation (``Any`` where it checks nothing we can express)."""
    if node is None:
        return Any
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a string annotation
        return _annotation_type(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Name):
        return _SCALARS.get(node.id, Any)
    members = _union_members(node)
    if members is not None:
        others = [m for m in members if not (isinstance(m, ast.Constant) and m.value is None)]
        if len(others) == 1 and len(others) < len(members):
            inner = _annotation_type(others[0])
            return Any if inner is Any else Optional[inner]  # noqa: UP045 - Hydra reads Optional, not |
        return Any
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        kinds = [_annotation_type(a) for a in args]
        if node.value.id in ("list", "List") and len(kinds) == 1:
            return list[kinds[0]]  # type: ignore[valid-type]
        if node.value.id in ("dict", "Dict") and len(kinds) == 2 and kinds[0] in (str, int):
            return dict[kinds[0], kinds[1]]  # type: ignore[valid-type]
    return Any


def _union_members(node: ast.expr) -> list[ast.expr] | None:
    """The members of ``A | B``, ``Optional[A]`` or ``Union[A, B]``; ``None`` if not a union."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return (_union_members(node.left) or [node.left]) + (_union_members(node.right) or [node.right])
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        if node.value.id == "Optional":
            return [node.slice, ast.Constant(None)]
        if node.value.id == "Union":
            return list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
    return None


def _constructor(module: str, qualname: str) -> ast.FunctionDef:
    """The function, or the class's ``__init__`` (inherited within its module), ``qualname`` names."""
    defs = _top_level(module)
    node = defs.get(qualname)
    while isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is not None:
            return init
        bases = [b.id for b in node.bases if isinstance(b, ast.Name) and b.id in defs]
        node = defs[bases[0]] if bases else None
        if node is None:
            return ast.parse("def __init__(self): pass").body[0]  # type: ignore[return-value]
    if not isinstance(node, ast.FunctionDef):
        raise LookupError(
            f"{module}.{qualname}: no class or function of that name in {module_source(module)}"
        )
    return node


def _literal(module: str, node: ast.expr) -> Any:
    """The value of a default: a literal, or a module constant (``ops=DARTS_OPS``) bound to one."""
    if not isinstance(node, ast.Name):
        return ast.literal_eval(node)
    for stmt in _module_ast(module).body:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == node.id for t in stmt.targets
        ):
            return _literal(module, stmt.value)
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and stmt.target.id == node.id
        ):
            if stmt.value is not None:
                return _literal(module, stmt.value)
        if isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
            for alias in stmt.names:
                if (alias.asname or alias.name) == node.id:
                    return _literal(stmt.module, ast.Name(alias.name))
    raise ValueError(node.id)


def _fields(target: str, exclude: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """``(name, type, dataclass field)`` per parameter of ``target``'s signature."""
    module, _, qualname = target.rpartition(".")
    fn = _constructor(module, qualname)
    args = fn.args
    positional = args.posonlyargs + args.args
    if qualname[:1].isupper() or positional[:1] and positional[0].arg == "self":
        positional = positional[1:]  # self
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params = list(zip(positional, defaults, strict=True)) + list(
        zip(args.kwonlyargs, args.kw_defaults, strict=True)
    )
    out = []
    for arg, default in params:
        if arg.arg in exclude:
            continue
        kind = _annotation_type(arg.annotation)
        if default is None:
            out.append((arg.arg, kind, field(default=MISSING)))
            continue
        try:
            value = _literal(module, default)
        except ValueError:
            raise TypeError(
                f"{target}: the default of {arg.arg!r} is not a literal ({ast.unparse(default)}); "
                "a config default must be written as a literal in the signature"
            ) from None
        if isinstance(value, tuple):
            value = list(value)
        if value is None and kind is not Any and type(None) not in get_args(kind):
            kind = Optional[kind]  # noqa: UP045
        if isinstance(value, list | dict):
            out.append((arg.arg, kind, field(default_factory=lambda v=value: type(v)(v))))  # type: ignore[misc]
        else:
            out.append((arg.arg, kind, field(default=value)))
    return out


def schema_of(target: str, name: str, *, partial: bool = False, runtime: tuple[str, ...] = ()) -> type:
    """The schema of ``target``'s config: ``_target_`` and one field per parameter, with its default.

    Args:
        target: the dotted path of the class or function that the config group instantiates.
        name: the schema's class name (error messages name it, e.g. ``OneShotSearchConfig``).
        partial: the config builds a ``functools.partial`` (``_partial_: true``) that the pipeline
            completes with the ``runtime`` arguments.
        runtime: parameters the pipeline passes itself; they are not config keys.

    Returns:
        A dataclass type for Hydra's ConfigStore.
    """
    head: list[tuple[str, Any, Any]] = [("_target_", str, field(default=target))]
    if partial:
        head.append(("_partial_", bool, field(default=True)))
    cls = dataclasses.make_dataclass(name, head + _fields(target, runtime))
    cls.__module__ = __name__
    return cls


def _search(target: str, name: str) -> type:
    return schema_of(target, name, partial=True, runtime=SEARCH_RUNTIME_ARGS)


def snake_case(name: str) -> str:
    """``GumbelMaxST`` -> ``gumbel_max_st``, ``SingleLevel`` -> ``single_level``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def oneshot_pieces() -> dict[str, str]:
    """Class name -> dotted path of every plug-in, architecture distribution and update found in
    ``nasrun/search/oneshot/`` by the rule in this module's docstring."""
    folder = module_source(f"{_ONESHOT}.plugin").parent
    classes: dict[str, tuple[str, ast.ClassDef]] = {}
    for path in sorted(folder.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        module = f"{_ONESHOT}.{path.stem}"
        for node in _module_ast(module).body:
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, (module, node))

    def bases(name: str) -> list[str]:
        node = classes[name][1]
        names = [
            b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
            for b in node.bases
        ]
        return [n for n in names if n]

    def lineage(name: str) -> set[str]:  # the class and its ancestors within the folder
        seen, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo += [b for b in bases(n) if b in classes] if n in classes else []
        return seen

    def methods(name: str) -> set[str]:
        return {
            f.name
            for n in lineage(name)
            if n in classes
            for f in classes[n][1].body
            if isinstance(f, ast.FunctionDef)
        }

    found = {}
    for name, (module, _node) in classes.items():
        if name.startswith("_") or name in _ONESHOT_OWN or "Protocol" in bases(name):
            continue
        plugin = "OneShotPlugin" in lineage(name)
        sampler = {"sample", "mode"} <= methods(name)
        update = "stepper" in methods(name)
        if plugin or sampler or update:
            found[name] = f"{module}.{name}"
    return found


TrainerConfig = schema_of("nasrun.train.trainer.Trainer", "TrainerConfig")
CifarCellSpaceConfig = schema_of("nasrun.space.cifar_cell.CifarCellSpace", "CifarCellSpaceConfig")
NB201SpaceConfig = schema_of("nasrun.space.nb201.NB201Space", "NB201SpaceConfig")
OneShotSearchConfig = _search("nasrun.search.oneshot.engine.OneShotSearch", "OneShotSearchConfig")
RandomSearchConfig = _search("nasrun.search.blackbox.random_search.RandomSearch", "RandomSearchConfig")
EvolutionSearchConfig = _search(
    "nasrun.search.blackbox.evolution.RegularizedEvolution", "EvolutionSearchConfig"
)
ReinforceSearchConfig = _search("nasrun.search.blackbox.reinforce.Reinforce", "ReinforceSearchConfig")
PNASSearchConfig = _search("nasrun.search.blackbox.pnas.PNAS", "PNASSearchConfig")
BOSearchConfig = _search("nasrun.search.blackbox.bo_search.BayesianOptimization", "BOSearchConfig")
TrainEvaluatorConfig = schema_of("nasrun.evaluator.train.TrainEvaluator", "TrainEvaluatorConfig")
TabularEvaluatorConfig = schema_of("nasrun.evaluator.tabular.TabularEvaluator", "TabularEvaluatorConfig")
CifarDataConfig = schema_of("nasrun.data.cifar.cifar10", "CifarDataConfig")  # cifar100: same parameters
DigitsDataConfig = schema_of("nasrun.data.digits.digits", "DigitsDataConfig")
SyntheticDataConfig = schema_of("nasrun.data.synthetic.synthetic", "SyntheticDataConfig")

# A one-shot search's pieces, placed under search.sampler / search.update / search.plugins.<name>
# by the method's file (``- gumbel_max_st_schema@sampler``), so that their keys are typed and shown
# by --cfg job. Discovered in nasrun/search/oneshot/ (see the module docstring).
ONESHOT_SCHEMAS: dict[str, type] = {}
for _name, _target in oneshot_pieces().items():
    ONESHOT_SCHEMAS[f"{snake_case(_name)}_schema"] = globals()[f"{_name}Config"] = schema_of(
        _target, f"{_name}Config"
    )


# DARTS+'s early-stop criteria (``search/early_stop=NAME``): the group's files extend these.
SkipConnectsConfig = schema_of("nasrun.search.oneshot.early_stop.SkipConnects", "SkipConnectsConfig")
StableRankingConfig = schema_of("nasrun.search.oneshot.early_stop.StableRanking", "StableRankingConfig")


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
        **ONESHOT_SCHEMAS,
    },
    "evaluator": {"train_schema": TrainEvaluatorConfig, "tabular_schema": TabularEvaluatorConfig},
    "data": {
        "cifar_schema": CifarDataConfig,
        "digits_schema": DigitsDataConfig,
        "synthetic_schema": SyntheticDataConfig,
    },
    "genotype": {"genotype_schema": GenotypeConfig},
    "search/early_stop": {
        "skip_connects_schema": SkipConnectsConfig,
        "stable_ranking_schema": StableRankingConfig,
    },
}


def register_configs(extra: dict[str, dict[str, Any]] | None = None) -> None:
    """Store the root schema and every group schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=NasrunConfig)
    for group, nodes in {**SCHEMAS, **(extra or {})}.items():
        for name, node in nodes.items():
            cs.store(group=group, name=name, node=node)
