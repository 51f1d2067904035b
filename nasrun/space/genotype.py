"""The genotype: a discrete cell architecture as a typed, JSON-serialisable value.

A genotype lists, for each cell kind, the chosen ``(op, input)`` edges in node order and the nodes
whose outputs are concatenated into the cell output. Inputs ``0`` and ``1`` are the outputs of the
two previous cells; ``2..`` are the cell's own intermediate nodes (DARTS numbering, Liu et al. 2019).

How edges are grouped into nodes is the search space's default (two per node in the DARTS cell
space, ``i`` for node ``i`` in NAS-Bench-201) unless the genotype says otherwise:
``normal_nodes`` / ``reduce_nodes`` give the number of edges into each intermediate node, in node
order, so a cell may have nodes with one, three or no inputs (SNAS keeps every edge whose strongest
op is not ``none``, Xie et al. 2019). Files without these keys load as before.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasrun import UserError
from nasrun.run_folder import write_json_atomic

Edge = tuple[str, int]


class GenotypeError(UserError):
    """A genotype file or value that cannot be used."""


def _edges(value: Any, where: str) -> tuple[Edge, ...]:
    if not isinstance(value, (list, tuple)):
        raise GenotypeError(f"{where}: expected a list of [op, input] pairs, got {type(value).__name__}")
    out: list[Edge] = []
    for i, pair in enumerate(value):
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or isinstance(pair[1], bool)
            or not isinstance(pair[1], int)
        ):
            raise GenotypeError(f"{where}[{i}]: expected [op_name, input_index], got {pair!r}")
        if pair[1] < 0:
            raise GenotypeError(f"{where}[{i}]: input index must be >= 0, got {pair[1]}")
        out.append((pair[0], int(pair[1])))
    return tuple(out)


def _ints(value: Any, where: str, what: str = "node indices") -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise GenotypeError(f"{where}: expected a list of {what}, got {value!r}")
    return tuple(int(v) for v in value)


def _counts(value: Any, edges: tuple[Edge, ...], where: str) -> tuple[int, ...]:
    """Edges per node: non-negative, adding up to the cell's edges (``()``: the space's default)."""
    counts = _ints(list(value), where, "edge counts per node")
    if any(c < 0 for c in counts):
        raise GenotypeError(f"{where}: edge counts must be >= 0, got {list(counts)}")
    if counts and sum(counts) != len(edges):
        raise GenotypeError(
            f"{where}: {list(counts)} accounts for {sum(counts)} edges, the cell lists {len(edges)}"
        )
    return counts


@dataclass(frozen=True)
class Genotype:
    """A discrete architecture.

    Attributes:
        normal: ``(op, input)`` edges of the normal cell, in node order.
        normal_concat: nodes concatenated into the normal cell's output.
        reduce: ``(op, input)`` edges of the reduction cell (empty for single-cell spaces).
        reduce_concat: nodes concatenated into the reduction cell's output.
        space: name of the search space the genotype belongs to.
        normal_nodes: edges into each intermediate node of the normal cell, in node order; ``()``:
            the space's default grouping (two per node in the DARTS cell space).
        reduce_nodes: the same for the reduction cell.
    """

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...] = ()
    reduce_concat: tuple[int, ...] = ()
    space: str = "cifar_cell"
    normal_nodes: tuple[int, ...] = ()
    reduce_nodes: tuple[int, ...] = ()

    def cell(self, kind: str) -> tuple[tuple[Edge, ...], tuple[int, ...], tuple[int, ...]]:
        """``(edges, concat, edges per node)`` of the ``normal`` or ``reduce`` cell."""
        if kind == "normal":
            return self.normal, self.normal_concat, self.normal_nodes
        return self.reduce, self.reduce_concat, self.reduce_nodes

    def ops(self) -> set[str]:
        """Every operation name the genotype uses."""
        return {op for op, _ in self.normal + self.reduce}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "space": self.space,
            "normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }
        # Written only when set, so a cell of two edges per node keeps the file it always had.
        if self.normal_nodes:
            d["normal_nodes"] = list(self.normal_nodes)
        if self.reduce_nodes:
            d["reduce_nodes"] = list(self.reduce_nodes)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "genotype") -> Genotype:
        """Build from a plain mapping (JSON or YAML), validating its structure.

        Raises:
            GenotypeError: naming ``where`` and the offending key.
        """
        if not hasattr(d, "keys"):
            raise GenotypeError(f"{where}: expected a mapping with keys normal, normal_concat, ...")
        known = {
            "space",
            "normal",
            "normal_concat",
            "reduce",
            "reduce_concat",
            "normal_nodes",
            "reduce_nodes",
            "name",
        }
        unknown = sorted(set(d.keys()) - known)
        if unknown:
            raise GenotypeError(f"{where}: unknown key {unknown[0]!r} (expected one of {sorted(known)})")
        for key in ("normal", "normal_concat"):
            if key not in d:
                raise GenotypeError(f"{where}: missing key {key!r}")
        space = d.get("space", "cifar_cell")
        if not isinstance(space, str):
            raise GenotypeError(f"{where}.space: expected a string, got {space!r}")
        normal = _edges(list(d["normal"]), f"{where}.normal")
        reduce = _edges(list(d.get("reduce", [])), f"{where}.reduce")
        return cls(
            normal=normal,
            normal_concat=_ints(list(d["normal_concat"]), f"{where}.normal_concat"),
            reduce=reduce,
            reduce_concat=_ints(list(d.get("reduce_concat", [])), f"{where}.reduce_concat"),
            space=space,
            normal_nodes=_counts(d.get("normal_nodes") or [], normal, f"{where}.normal_nodes"),
            reduce_nodes=_counts(d.get("reduce_nodes") or [], reduce, f"{where}.reduce_nodes"),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as JSON atomically (a crash never leaves half a file)."""
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Genotype:
        """Read a ``genotype.json``.

        Raises:
            GenotypeError: the file is missing, not JSON, or not a genotype; the message names it.
        """
        p = Path(path)
        if not p.is_file():
            raise GenotypeError(f"genotype file not found: {p}")
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GenotypeError(f"{p}: not valid JSON ({e})") from None
        return cls.from_dict(data, where=str(p))


def check_space(genotype: Genotype, space: str, where: str = "genotype") -> None:
    """Raise unless ``genotype`` belongs to the search space named ``space``.

    The two spaces' genotypes share one file format, so a genotype of the other space could
    otherwise pass as far as an error about its edge count, which says nothing of the real cause.

    Raises:
        GenotypeError: naming both spaces and the override that selects the genotype's own.
    """
    if genotype.space != space:
        raise GenotypeError(
            f"{where}: belongs to space {genotype.space!r}, not {space!r} "
            f"(select its space with space={genotype.space})"
        )


def edges_by_node(edges: Sequence[Edge], per_node: Sequence[int]) -> list[list[Edge]]:
    """Split a flat edge list into nodes holding ``per_node[i]`` edges each."""
    out, k = [], 0
    for n in per_node:
        out.append(list(edges[k : k + n]))
        k += n
    return out
