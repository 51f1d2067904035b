"""PNG figures of search histories: convergence curves and architecture-weight heatmaps.

Cell diagrams live in ``nasrun.plots.cell_diagram``; how figures are drawn and written: see
``nasrun.plots``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasrun.plots import save_png

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from nasrun.bo.store import Trial

#: Marker and colour of the evaluations without a score, by state (``plot_convergence``).
STATE_MARKERS: dict[str, tuple[str, str]] = {
    "failed": ("x", "tab:red"),
    "pruned": ("v", "tab:gray"),
    "running": ("|", "tab:orange"),
    "pending": ("|", "tab:gray"),
}
_OTHER_STATE = ("d", "black")


def best_so_far(values: Sequence[float], maximize: bool = True) -> list[float]:
    """The running best of ``values``.

    Non-finite values (failed evaluations are often recorded as NaN or inf) never count as an
    improvement; entries before the first finite value are NaN.

    Args:
        values: scores in evaluation order.
        maximize: whether larger scores are better.

    Returns:
        A list as long as ``values`` whose entry ``i`` is the best finite value among
        ``values[:i + 1]``.
    """
    out: list[float] = []
    best = math.nan
    for v in values:
        v = float(v)
        if math.isfinite(v) and (math.isnan(best) or (v > best if maximize else v < best)):
            best = v
        out.append(best)
    return out


def plot_convergence(
    values: Sequence[float],
    path: str | Path,
    title: str = "",
    ylabel: str = "score",
    maximize: bool = True,
    xlabel: str = "evaluation",
    xs: Sequence[float] | None = None,
    states: Sequence[str | None] | None = None,
) -> Path:
    """Plot each evaluation's score as a faint dot and the best score so far as a step line.

    Evaluations without a score (a failed, pruned or still running trial) can be marked along
    the x axis, one marker per state, so that they show where they happened.

    Args:
        values: scores in evaluation order (NaN for an evaluation without a score).
        path: PNG file to write; missing parent folders are created.
        title: axes title.
        ylabel: y-axis label.
        maximize: whether larger scores are better (decides what "best" means).
        xlabel: x-axis label.
        xs: the x value of each evaluation (a trial number, say); defaults to ``1, 2, 3, ...``.
        states: per evaluation, ``None`` or the state to mark it with at the bottom of the axes
            (``failed``, ``pruned``, ``running``, ``pending``; another name gets a black diamond).

    Returns:
        The path written.

    Raises:
        ValueError: ``xs`` or ``states`` is not as long as ``values``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = list(xs) if xs is not None else list(range(1, len(values) + 1))
    marks = list(states) if states is not None else [None] * len(values)
    if len(x) != len(values) or len(marks) != len(values):
        raise ValueError(f"{len(values)} values need as many xs and states, got {len(x)} and {len(marks)}")
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if values:
        ax.scatter(x, [float(v) for v in values], s=14, alpha=0.35, color="tab:blue", label="evaluation")
        ax.step(x, best_so_far(values, maximize), where="post", color="tab:red", lw=2, label="best so far")
        for state in dict.fromkeys(s for s in marks if s):
            at = [xi for xi, s in zip(x, marks, strict=True) if s == state]
            marker, colour = STATE_MARKERS.get(state, _OTHER_STATE)
            # x in data units, y in axes units: on the x axis whatever the scores' range.
            ax.scatter(
                at,
                [0.03] * len(at),
                marker=marker,
                color=colour,
                s=40,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                label=f"{state} ({len(at)})",
            )
        # Below the axes: inside, the legend would hide dots or the step line wherever they fall.
        fig.legend(loc="outside lower center", ncols=4, frameon=False)
    else:
        _no_data(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_trials(
    trials: Sequence[Trial], path: str | Path, direction: str = "maximize", title: str = "BoTorch sweep"
) -> Path:
    """``plot_convergence`` of a sweep's trials: the objective against the trial number.

    Trials that have not completed (failed, pending, running, or any other state the store
    records) are marked on the x axis by their state.

    Args:
        trials: the trial store's trials, in proposal order.
        path: PNG file to write; missing parent folders are created.
        direction: ``maximize`` or ``minimize``.
        title: axes title.

    Returns:
        The path written.
    """
    values: list[float] = []
    states: list[str | None] = []
    for t in trials:
        completed = t.state.value == "COMPLETED" and t.value is not None
        values.append(float(t.value) if completed and t.value is not None else math.nan)
        states.append(None if completed else t.state.value.lower())
    return plot_convergence(
        values,
        path,
        title=title,
        ylabel=f"objective ({direction})",
        maximize=direction != "minimize",
        xlabel="trial",
        xs=[t.id for t in trials],
        states=states,
    )


def arch_weight_records(history: Sequence[Mapping[str, Any]], cell_type: str) -> list[Mapping[str, Any]]:
    """The records of a one-shot search history that hold ``cell_type``'s architecture weights."""
    out = []
    for rec in history:
        weights = (rec.get("alphas") or {}).get(cell_type)
        if isinstance(weights, list) and weights and all(isinstance(row, list) for row in weights):
            out.append(rec)
    return out


def panel_indices(n: int, max_panels: int) -> list[int]:
    """The indices of the epochs, of ``n``, that get a panel.

    All of them up to ``max_panels``; else at most ``max_panels`` evenly spaced ones, the first
    and the last included (the last alone for ``max_panels < 2``).
    """
    if n <= max_panels:
        return list(range(n))
    if max_panels < 2:
        return [n - 1]
    return sorted({round(k * (n - 1) / (max_panels - 1)) for k in range(max_panels)})


def arch_weight_grids(records: Sequence[Mapping[str, Any]], cell_type: str) -> tuple[list[str], list[Any]]:
    """Each record's weights for ``cell_type`` as an ``[n_edges, n_columns]`` array over shared op columns.

    Args:
        records: records holding ``alphas[cell_type]`` (see ``arch_weight_records``).
        cell_type: ``normal`` or ``reduce``.

    Returns:
        The op names of the columns, in order of first appearance, and one NumPy array per record;
        an op that an edge does not have (pruned by a staged search) is NaN.
    """
    import numpy as np

    per_record = [_edge_op_names(rec, cell_type) for rec in records]
    columns = list(dict.fromkeys(op for names in per_record for edge in names for op in edge))
    n_edges = max(len(rec["alphas"][cell_type]) for rec in records)
    grids = []
    for rec, names in zip(records, per_record, strict=True):
        grid = np.full((n_edges, len(columns)), np.nan)
        for e, (row, ops) in enumerate(zip(rec["alphas"][cell_type], names, strict=True)):
            for w, op in zip(row, ops, strict=True):
                grid[e, columns.index(op)] = float(w)
        grids.append(grid)
    return columns, grids


def plot_arch_weights(
    history: Sequence[Mapping[str, Any]],
    cell_type: str,
    path: str | Path,
    max_panels: int = 6,
) -> Path:
    """Heatmaps of one cell type's architecture weights (edges x ops) over a one-shot search.

    Every epoch record of a one-shot search's ``history.jsonl`` holds, under ``alphas``, each cell
    type's softmaxed op weights as an ``[n_edges, n_ops]`` list. One panel per shown epoch (all of
    them up to ``max_panels``, else evenly spaced ones, the first and the last included), on one
    colour scale, each cell annotated with its weight and each edge's strongest op in bold. Ops
    are named from the record's ``ops`` (or, where stages prune them, per edge from
    ``edge_ops``); an op an edge no longer has is left grey.

    Args:
        history: the search's records, in epoch order; records without weights for ``cell_type``
            are skipped.
        cell_type: ``normal`` or ``reduce``.
        path: PNG file to write; missing parent folders are created.
        max_panels: most epochs shown.

    Returns:
        The path written.

    Raises:
        ValueError: no record holds weights for ``cell_type``.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = arch_weight_records(history, cell_type)
    if not records:
        raise ValueError(f"no record holds architecture weights for the {cell_type} cell")
    picked = panel_indices(len(records), max_panels)
    shown = [records[i] for i in picked]
    columns, grids = arch_weight_grids(shown, cell_type)
    n_edges = grids[0].shape[0]
    # Near-uniform weights (early epochs) sit mid-scale rather than at its bright top.
    vmax = max(max(float(np.nanmax(g)) for g in grids), min(1.0, 2.0 / len(columns)))
    ncols = min(3, len(grids))
    nrows = math.ceil(len(grids) / ncols)
    fig = Figure(
        figsize=(1.8 + ncols * (0.55 * len(columns) + 0.6), 0.9 + nrows * (0.34 * n_edges + 1.1)),
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    edge_labels = supernet_edge_labels(n_edges)
    annotate = n_edges * len(columns) <= 200
    cmap = colormaps["viridis"].with_extremes(bad="#dddddd")  # grey: an op the edge no longer has
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= len(grids):
            ax.set_axis_off()
            continue
        grid = grids[k]
        masked = np.ma.masked_invalid(grid)
        image = ax.imshow(masked, vmin=0.0, vmax=vmax, cmap=cmap, aspect="auto")
        epoch = shown[k].get("epoch", picked[k] + 1)
        ax.set_title(f"epoch {epoch}", fontsize=10)
        ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=8)
        # Op names under the lowest panel of each column only.
        ax.tick_params(labelbottom=k + ncols >= len(grids))
        ax.set_yticks(range(n_edges), edge_labels, fontsize=8)
        if annotate:
            for e in range(n_edges):
                row = grid[e]
                if np.isnan(row).all():
                    continue
                best = int(np.nanargmax(row))
                for j, w in enumerate(row):
                    if math.isnan(w):
                        continue
                    ax.text(
                        j,
                        e,
                        f"{w:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        fontweight="bold" if j == best else "normal",
                        color="black" if w > 0.6 * vmax else "white",
                    )
    assert image is not None
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="op weight (softmax)")
    fig.suptitle(f"architecture weights, {cell_type} cell", fontsize=12)
    return save_png(fig, path)


# --------------------------------------------------------------------------------------------
# helpers


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")


def _edge_op_names(record: Mapping[str, Any], cell_type: str) -> list[list[str]]:
    """Per edge, the names of the ops its weights belong to."""
    weights = record["alphas"][cell_type]
    per_edge = (record.get("edge_ops") or {}).get(cell_type)
    if isinstance(per_edge, list) and len(per_edge) == len(weights):
        return [[str(op) for op in ops] for ops in per_edge]
    ops = record.get("ops")
    if isinstance(ops, list) and all(len(row) == len(ops) for row in weights):
        return [[str(op) for op in ops] for _ in weights]
    return [[f"op {j}" for j in range(len(row))] for row in weights]


def supernet_edge_labels(n_edges: int) -> list[str]:
    """Names of a supernet cell's edges, ``source -> node`` in the DARTS cell's edge order.

    Node ``i`` of a DARTS cell takes an edge from each of the two cell inputs and from every node
    before it, so a cell of ``N`` nodes has ``2 + 3 + ... + (N + 1)`` edges; other counts are
    named ``edge 0``, ``edge 1``, ...
    """
    labels: list[str] = []
    node = 0
    while len(labels) < n_edges:
        sources = ["$c_{k-2}$", "$c_{k-1}$", *(str(j) for j in range(node))]
        labels += [f"{s} → {node}" for s in sources]
        node += 1
    if len(labels) != n_edges:
        return [f"edge {e}" for e in range(n_edges)]
    return labels
