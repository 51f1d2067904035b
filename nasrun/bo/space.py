"""Parameter spaces for Bayesian optimisation: typed parameters parsed from Hydra's override grammar.

A ``ParamSpace`` (the search space of a sweep) is an ordered tuple of parameters. It is unrelated
to the architecture search spaces of ``nasrun.space``. The model works in an *encoded* space of the
same dimension ``d``:

* ``Real`` and ``Integer`` map onto ``[0, 1]`` (after a log transform when tagged ``log``),
  integers are snapped to their grid after every proposal;
* ``Categorical`` maps onto the choice index ``0 .. k-1``, which ``MixedSingleTaskGP``'s
  categorical kernel compares only for equality.

Parsing uses Hydra's own ``OverridesParser`` so the grammar is exactly the one users already know
(``interval``, ``int(interval(..))``, ``tag(log, ..)``, ``choice``, ``range``); this module only
turns the parsed sweeps into typed parameters and checks them. Importing it does not import
torch, so the sweeper can validate a space before any heavy import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nasrun import UserError


class ParamSpaceError(UserError):
    """A parameter-space definition that cannot be used; the message names the parameter."""


@dataclass(frozen=True)
class Real:
    """A float in ``[low, high]``, searched on a log scale when ``log`` is set."""

    name: str
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Integer:
    """An integer in ``low, low + step, ..., high`` (both ends included), optionally on a log scale."""

    name: str
    low: int
    high: int
    step: int = 1
    log: bool = False

    @property
    def values(self) -> list[int]:
        """Every allowed value, in increasing order."""
        return list(range(self.low, self.high + 1, self.step))


@dataclass(frozen=True)
class Categorical:
    """One of unordered ``choices``; ``literals`` are their override-grammar spellings."""

    name: str
    choices: tuple[Any, ...]
    literals: tuple[str, ...]


Parameter = Real | Integer | Categorical


def _check_bounds(name: str, low: float, high: float, log: bool, spelling: str) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ParamSpaceError(f"parameter '{name}': {spelling} needs finite bounds")
    if low >= high:
        raise ParamSpaceError(
            f"parameter '{name}': {spelling} is empty; the lower bound must be below the upper bound"
        )
    if log and low <= 0:
        raise ParamSpaceError(f"parameter '{name}': tag(log, ...) needs a positive range, got {spelling}")


def _make_parameter(override: Any) -> Parameter:
    """Turns one parsed Hydra sweep override into a typed parameter (see the module docstring)."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    name = override.get_key_element()
    sweep = override.value()
    log = "log" in sweep.tags
    unknown_tags = set(sweep.tags) - {"log"}
    if unknown_tags:
        raise ParamSpaceError(
            f"parameter '{name}': unknown tag(s) {sorted(unknown_tags)}; only 'log' is understood"
        )
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if low is None or high is None:
            raise ParamSpaceError(f"parameter '{name}': interval() needs both bounds")
        # Hydra's interval() always yields floats; int(interval(..)) casts both ends to int.
        is_int = isinstance(low, int) and isinstance(high, int)
        _check_bounds(name, float(low), float(high), log, f"interval({low}, {high})")
        if is_int:
            return Integer(name, int(low), int(high), 1, log)
        return Real(name, float(low), float(high), log)
    if isinstance(sweep, RangeSweep):
        if sweep.shuffle:
            raise ParamSpaceError(
                f"parameter '{name}': shuffle() has no meaning in a Bayesian-optimisation sweep"
            )
        if log:
            raise ParamSpaceError(
                f"parameter '{name}': tag(log, range(..)) is not supported; use tag(log, int(interval(..)))"
            )
        if not all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            raise ParamSpaceError(
                f"parameter '{name}': range() takes integers here; use interval() for floats or choice() for a list"
            )
        values = list(override.sweep_iterator())
        if not values or sweep.step <= 0:
            raise ParamSpaceError(
                f"parameter '{name}': range({sweep.start}, {sweep.stop}, {sweep.step}) holds no values"
            )
        if len(values) == 1:
            raise ParamSpaceError(
                f"parameter '{name}': range() holds a single value; set it as a fixed override"
            )
        return Integer(name, values[0], values[-1], int(sweep.step), False)
    if isinstance(sweep, ChoiceSweep):
        if log:
            raise ParamSpaceError(f"parameter '{name}': tag(log, choice(..)) is not supported")
        choices = tuple(override.sweep_iterator())
        literals = tuple(override.sweep_string_iterator())
        if len(choices) == 0:
            raise ParamSpaceError(f"parameter '{name}': choice() is empty")
        if len(set(literals)) != len(literals):
            raise ParamSpaceError(f"parameter '{name}': choice({', '.join(literals)}) repeats a value")
        return Categorical(name, choices, literals)
    raise ParamSpaceError(f"parameter '{name}': unsupported sweep {sweep!r}")


def parse_overrides(lines: Iterable[str]) -> tuple[ParamSpace, list[str]]:
    """Splits Hydra override strings into a parameter space and fixed overrides.

    Args:
        lines: Overrides such as ``"trainer.lr=tag(log, interval(1e-4, 0.3))"`` or ``"data=cifar"``.

    Returns:
        The parameter space made of the sweep overrides, and the non-sweep overrides unchanged
        (they are passed to every trial).

    Raises:
        ParamSpaceError: One line naming the offending parameter.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    params: list[Parameter] = []
    fixed: list[str] = []
    for line in lines:
        try:
            override = parser.parse_override(line)
        except HydraException as e:
            key = line.split("=", 1)[0]
            # Hydra reports e.g. "ValueError while evaluating 'choice()': empty choice is not legal".
            raise ParamSpaceError(f"parameter '{key}': {str(e).splitlines()[0]}") from None
        if override.is_sweep_override():
            params.append(_make_parameter(override))
        else:
            fixed.append(line)
    return ParamSpace(params), fixed


def _format(value: Any) -> str:
    """Spells a number so that Hydra parses it back to the same value and type."""
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form, e.g. 0.0001 or 1e-05
    return str(value)


class ParamSpace:
    """An ordered, immutable set of parameters (a sweep's search space) and their encoding to model space.

    Args:
        params: The parameters, in the column order of the encoded space.

    Raises:
        ParamSpaceError: When the space is empty or a name repeats.
    """

    def __init__(self, params: Sequence[Parameter]) -> None:
        if not params:
            raise ParamSpaceError(
                "the search space is empty: give parameters under hydra.sweeper.params, "
                "e.g. 'hydra.sweeper.params.trainer.lr=tag(log, interval(1e-4, 0.1))'"
            )
        names = [p.name for p in params]
        for name in names:
            if names.count(name) > 1:
                raise ParamSpaceError(f"parameter '{name}' is given twice")
        self.params: tuple[Parameter, ...] = tuple(params)

    @property
    def dim(self) -> int:
        """Number of encoded dimensions ``d`` (one per parameter)."""
        return len(self.params)

    @property
    def names(self) -> list[str]:
        """Parameter names in column order."""
        return [p.name for p in self.params]

    @property
    def cat_dims(self) -> dict[int, list[float]]:
        """Column index -> allowed encoded values of every categorical parameter."""
        return {
            i: [float(j) for j in range(len(p.choices))]
            for i, p in enumerate(self.params)
            if isinstance(p, Categorical)
        }

    @property
    def int_dims(self) -> dict[int, list[float]]:
        """Column index -> allowed encoded values (increasing) of every integer parameter."""
        return {
            i: [self._encode_one(p, v) for v in p.values]
            for i, p in enumerate(self.params)
            if isinstance(p, Integer)
        }

    def upper(self) -> list[float]:
        """Upper bounds of the encoded space per column (the lower bounds are all 0)."""
        return [float(len(p.choices) - 1) if isinstance(p, Categorical) else 1.0 for p in self.params]

    @staticmethod
    def _encode_one(p: Parameter, value: Any) -> float:
        if isinstance(p, Categorical):
            return float(p.choices.index(value))
        if p.log:
            return (math.log(value) - math.log(p.low)) / (math.log(p.high) - math.log(p.low))
        return (value - p.low) / (p.high - p.low)

    @staticmethod
    def _decode_one(p: Parameter, u: float) -> Any:
        if isinstance(p, Categorical):
            return p.choices[min(max(round(u), 0), len(p.choices) - 1)]
        u = min(max(u, 0.0), 1.0)
        if isinstance(p, Integer):
            # Nearest grid value in the searched scale, so log-integers round geometrically.
            return min(p.values, key=lambda v: abs(ParamSpace._encode_one(p, v) - u))
        if p.log:
            raw = math.exp(math.log(p.low) + u * (math.log(p.high) - math.log(p.low)))
        else:
            raw = p.low + u * (p.high - p.low)
        return min(max(raw, p.low), p.high)  # exp/log round-off must not leave the interval

    def encode(self, values: Mapping[str, Any]) -> list[float]:
        """Maps parameter values to one encoded point.

        Args:
            values: Parameter name -> value, one entry per parameter.

        Returns:
            The encoded point, a list of ``d`` floats.
        """
        return [self._encode_one(p, values[p.name]) for p in self.params]

    def decode(self, x: Sequence[float]) -> dict[str, Any]:
        """Maps one encoded point (``d`` floats) to parameter values, snapping discrete columns."""
        return {p.name: self._decode_one(p, float(u)) for p, u in zip(self.params, x, strict=True)}

    def snap(self, x: Sequence[float]) -> list[float]:
        """Rounds an encoded point (``d`` floats) onto the points the space can actually take."""
        return self.encode(self.decode(x))

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        """Spells parameter values as Hydra overrides, e.g. ``["trainer.lr=0.003"]``."""
        out = []
        for p in self.params:
            value = values[p.name]
            text = p.literals[p.choices.index(value)] if isinstance(p, Categorical) else _format(value)
            out.append(f"{p.name}={text}")
        return out

    def signature(self) -> str:
        """A JSON description of the space; a resumed sweep must have the same one."""
        return json.dumps(
            [
                {"kind": type(p).__name__, **{k: v for k, v in vars(p).items() if k != "choices"}}
                for p in self.params
            ],
            sort_keys=True,
        )

    def __repr__(self) -> str:
        return f"ParamSpace({list(self.params)!r})"


SWEEPER_PARAMS = "hydra.sweeper.params."


def prepare_sweeper_args(args: Sequence[str]) -> list[str]:
    """Makes ``hydra.sweeper.params.KEY=SPACE`` command-line overrides legal for Hydra 1.3.

    Two rewrites, so users can type the search space as docs/sweeper.md shows it:

    * the value is quoted: Hydra refuses sweep syntax such as ``interval(..)`` in overrides of its
      own ``hydra.*`` keys in multirun mode ("Sweeping over Hydra's configuration is not
      supported"); quoted, it is a plain string, which is what the sweeper parses anyway;
    * ``++`` is prepended (add or override): ``params`` starts empty, and Hydra refuses to
      override a key that does not exist yet.

    Entry points call this on ``sys.argv[1:]`` before Hydra sees it.

    Args:
        args: Command-line arguments.

    Returns:
        ``args`` with every ``hydra.sweeper.params.*`` override rewritten; others unchanged.
    """
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        bare = key.lstrip("+")
        if bare.startswith(SWEEPER_PARAMS) and sep:
            if value and value[0] not in "'\"":
                if '"' not in value:
                    value = f'"{value}"'
                elif "'" not in value:
                    value = f"'{value}'"
            arg = f"{key if key.startswith('+') else '++' + key}={value}"
        out.append(arg)
    return out
