"""PNG figures for search results: cell diagrams, convergence curves and training curves.

matplotlib is imported inside the functions so that ``import nasrun`` stays fast for commands
that never draw. Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly,
which needs no global backend and so cannot disturb a caller that chose one (or a headless
worker that has no display). Every PNG is written with ``nasrun.run_folder.atomic_write``, so a
reader (or a crash) never sees half an image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasrun.run_folder import atomic_write
from nasrun.space.genotype import Edge, Genotype, edges_by_node

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Layout of a cell diagram, in data units; the figure is sized from the data extent at a fixed
# scale so that fonts and boxes look the same whatever the cell size.
_INCH_PER_UNIT = 0.95
_X_GAP = 2.1  # horizontal distance between consecutive columns (inputs, nodes, output)
_ZIGZAG = 0.85  # vertical offset of intermediate nodes, alternating up/down
_INPUT_SPREAD = 1.9  # vertical distance of the two DARTS inputs from the centre line
_NODE_RADIUS = 0.34
_BOX_W, _BOX_H = 0.95, 0.56
_CLEARANCE = 0.52  # an edge passing closer than this to another node's centre gets curved
_LABEL_FONTSIZE = 7.5
_NODE_FONTSIZE = 11


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


def plot_cells(
    genotype: Genotype,
    path: str | Path,
    per_node: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """Draw the genotype's cells as DAGs, one panel per cell kind, into a PNG.

    Inputs sit on the left, intermediate nodes in the middle and the cell output on the right.
    Each edge is an arrow coloured and labelled with its operation; edges that would cross
    another node are curved around it. Dashed arrows lead from the concatenated nodes to the
    output.

    Args:
        genotype: the architecture to draw.
        path: PNG file to write; missing parent folders are created.
        per_node: number of incoming edges of each intermediate node, in node order. Defaults to
            ``1, 2, 3, ...`` for ``space == "nb201"`` and to 2 per node otherwise (DARTS cells).
        title: figure title; defaults to the genotype's space name.

    Returns:
        The path written.

    Raises:
        ValueError: ``per_node`` does not account for the cell's edges, or an edge refers to a
            node that does not precede it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nb201 = genotype.space == "nb201"
    cells: list[tuple[str, tuple[Edge, ...], tuple[int, ...]]] = [
        ("normal cell" if not nb201 else "cell", genotype.normal, genotype.normal_concat)
    ]
    if genotype.reduce:
        cells.append(("reduction cell", genotype.reduce, genotype.reduce_concat))

    layouts = [_layout_cell(name, edges, concat, per_node, nb201) for name, edges, concat in cells]
    fig = Figure()
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    colours = _op_colours(sorted(genotype.ops()))
    for lay in layouts:
        _place_labels(lay, renderer, fig.dpi)

    # All panels share one x range and scale so that the same node sits at the same place in
    # each panel; heights differ with how far the curved edges bulge.
    x0 = min(lay.extent[0] for lay in layouts)
    x1 = max(lay.extent[1] for lay in layouts)
    heights = [lay.extent[3] - lay.extent[2] for lay in layouts]
    panel_title_h = 0.45  # data units reserved above each panel for its name
    fig_title_h = 0.55
    total_h = sum(heights) + panel_title_h * len(layouts) + fig_title_h
    fig.set_size_inches((x1 - x0) * _INCH_PER_UNIT, total_h * _INCH_PER_UNIT)
    top = total_h - fig_title_h
    for lay, h in zip(layouts, heights, strict=True):
        top -= panel_title_h
        ax = fig.add_axes((0.0, (top - h) / total_h, 1.0, h / total_h))
        ax.set_xlim(x0, x1)
        ax.set_ylim(lay.extent[2], lay.extent[3])
        ax.set_axis_off()
        _draw_cell(ax, lay, colours)
        fig.text(0.02, (top + 0.08) / total_h, lay.name, fontsize=11, fontweight="bold", va="bottom")
        top -= h
    fig.suptitle(title if title is not None else f"genotype ({genotype.space})", fontsize=12, y=0.995)
    return _save(fig, path)


def plot_convergence(
    values: Sequence[float],
    path: str | Path,
    title: str = "",
    ylabel: str = "score",
    maximize: bool = True,
    xlabel: str = "evaluation",
) -> Path:
    """Plot each evaluation's score as a faint dot and the best score so far as a step line.

    Args:
        values: scores in evaluation order (NaN for failed evaluations is fine).
        path: PNG file to write; missing parent folders are created.
        title: axes title.
        ylabel: y-axis label.
        maximize: whether larger scores are better (decides what "best" means).
        xlabel: x-axis label.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = list(range(1, len(values) + 1))
    if values:
        ax.scatter(xs, [float(v) for v in values], s=14, alpha=0.35, color="tab:blue", label="evaluation")
        ax.step(xs, best_so_far(values, maximize), where="post", color="tab:red", lw=2, label="best so far")
        # Below the axes: inside, the legend would hide dots or the step line wherever they fall.
        fig.legend(loc="outside lower center", ncols=2, frameon=False)
    else:
        _no_data(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_training_curves(
    history: Sequence[dict[str, Any]],
    path: str | Path,
    keys: Sequence[str] = ("train_acc", "val_acc", "test_acc"),
) -> Path:
    """Plot per-epoch metrics from a training history (the records of ``history.jsonl``).

    Args:
        history: one mapping per epoch; ``record["epoch"]`` is the x value (the record's
            position is used where it is missing).
        path: PNG file to write; missing parent folders are created.
        keys: metrics to draw, one line each; keys absent from every record are skipped, and
            records lacking a key (or holding ``None``) leave a gap in that line only.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = 0
    for key in keys:
        pts = [
            (rec.get("epoch", i), float(rec[key]))
            for i, rec in enumerate(history)
            if rec.get(key) is not None
        ]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, label=key)
        drawn += 1
    if drawn:
        fig.legend(loc="outside lower center", ncols=drawn, frameon=False)
    else:
        _no_data(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy" if keys and all(k.endswith("acc") for k in keys) else "value")
    ax.grid(alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# helpers


def _save(fig: Figure, path: str | Path) -> Path:
    """Write the figure as PNG atomically (``nasrun.run_folder.atomic_write``)."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")


def _op_colours(ops: Sequence[str]) -> dict[str, str]:
    """A stable colour per operation, so the same op looks the same in every panel."""
    palette = [
        "#1f77b4",
        "#d62728",
        "#2ca02c",
        "#9467bd",
        "#ff7f0e",
        "#8c564b",
        "#e377c2",
        "#17becf",
        "#bcbd22",
        "#7f7f7f",
    ]
    coloured = [op for op in ops if op not in ("skip_connect", "none")]
    out = {op: palette[i % len(palette)] for i, op in enumerate(coloured)}
    # Identity and zero edges carry no computation: grey sets them apart from the real ops.
    out["skip_connect"] = "#555555"
    out["none"] = "#aaaaaa"
    return out


@dataclass
class _Arrow:
    src: int
    dst: int
    rad: float
    op: str | None = None  # None for the dashed concat arrows, which carry no label
    label_xy: tuple[float, float] = (0.0, 0.0)
    label_wh: tuple[float, float] = (0.0, 0.0)


@dataclass
class _CellLayout:
    name: str
    pos: dict[int, tuple[float, float]]  # node id -> centre; the output has id -1
    labels: dict[int, str]
    boxes: set[int]  # node ids drawn as boxes (inputs and output) rather than circles
    arrows: list[_Arrow]
    extent: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


_OUT = -1


def _default_per_node(n_edges: int, nb201: bool) -> list[int]:
    if not nb201:
        if n_edges % 2:
            raise ValueError(f"a DARTS cell has 2 edges per node, got {n_edges} edges; pass per_node")
        return [2] * (n_edges // 2)
    counts: list[int] = []
    k = 1
    while sum(counts) < n_edges:
        counts.append(k)
        k += 1
    if sum(counts) != n_edges:
        raise ValueError(f"an nb201 cell has 1, 2, 3, ... edges per node, got {n_edges} edges; pass per_node")
    return counts


def _layout_cell(
    name: str,
    edges: Sequence[Edge],
    concat: Sequence[int],
    per_node: Sequence[int] | None,
    nb201: bool,
) -> _CellLayout:
    """Place nodes, group edges into nodes and choose a curvature for every arrow."""
    counts = list(per_node) if per_node is not None else _default_per_node(len(edges), nb201)
    if sum(counts) != len(edges):
        raise ValueError(
            f"{name}: per_node {counts} accounts for {sum(counts)} edges, the cell has {len(edges)}"
        )
    # NB-201 numbers its single input 0 and the nodes 1, 2, 3; DARTS has two inputs (the previous
    # two cells) and numbers its intermediate nodes from 0 although their indices start at 2.
    n_in = 1 if nb201 else 2
    n_nodes = len(counts)
    pos: dict[int, tuple[float, float]] = {}
    labels: dict[int, str] = {}
    if nb201:
        pos[0], labels[0] = (0.0, 0.0), "in"
    else:
        pos[0], labels[0] = (0.0, _INPUT_SPREAD), "$c_{k-2}$"
        pos[1], labels[1] = (0.0, -_INPUT_SPREAD), "$c_{k-1}$"
    for i in range(n_nodes):
        # Alternating heights keep an edge between two non-adjacent nodes from running straight
        # through the nodes between them, which a single row would force.
        pos[n_in + i] = (_X_GAP * (i + 1), _ZIGZAG if i % 2 == 0 else -_ZIGZAG)
        labels[n_in + i] = str(i + 1 if nb201 else i)
    pos[_OUT] = (_X_GAP * (n_nodes + 1), 0.0)
    labels[_OUT] = "out" if nb201 else "$c_{k}$"

    arrows: list[_Arrow] = []
    seen: dict[tuple[int, int], int] = {}
    drawn: list[list[tuple[float, float]]] = []  # sampled curves of the arrows placed so far
    for i, node_edges in enumerate(edges_by_node(edges, counts)):
        dst = n_in + i
        for op, src in node_edges:
            if src >= dst:
                raise ValueError(f"{name}: node {labels[dst]} takes input {src}, which does not precede it")
            # A repeated (src, dst) pair would draw on top of its twin; fan repeats apart.
            k = seen.get((src, dst), 0)
            seen[(src, dst)] = k + 1
            arrows.append(_Arrow(src, dst, _choose_rad(pos, src, dst, drawn, extra=k), op))
            drawn.append(_curve(pos[src], pos[dst], arrows[-1].rad, 60))
    if not concat:
        # A cell without an explicit concat list outputs its last node (NB-201).
        concat = [n_in + n_nodes - 1]
    for c in concat:
        if c not in pos or c == _OUT:
            raise ValueError(f"{name}: concat node {c} does not exist")
        arrows.append(_Arrow(c, _OUT, _choose_rad(pos, c, _OUT, drawn)))
        drawn.append(_curve(pos[c], pos[_OUT], arrows[-1].rad, 60))
    return _CellLayout(name, pos, labels, {*range(n_in), _OUT}, arrows)


def _bezier(p0: tuple[float, float], p2: tuple[float, float], rad: float, t: float) -> tuple[float, float]:
    """Point ``t`` of matplotlib's ``arc3`` curve: a quadratic Bezier whose control point sits
    ``rad`` times the chord length off the chord's midpoint."""
    (x1, y1), (x2, y2) = p0, p2
    cx = (x1 + x2) / 2 + rad * (y2 - y1)
    cy = (y1 + y2) / 2 - rad * (x2 - x1)
    u = 1 - t
    return (u * u * x1 + 2 * u * t * cx + t * t * x2, u * u * y1 + 2 * u * t * cy + t * t * y2)


def _curve(p0: tuple[float, float], p2: tuple[float, float], rad: float, n: int) -> list[tuple[float, float]]:
    """``n + 1`` evenly spaced (in t) points of the arc3 curve, endpoints included."""
    return [_bezier(p0, p2, rad, k / n) for k in range(n + 1)]


def _choose_rad(
    pos: dict[int, tuple[float, float]],
    src: int,
    dst: int,
    drawn: Sequence[list[tuple[float, float]]],
    extra: int = 0,
) -> float:
    """An arc3 curvature for the arrow ``src -> dst``.

    The arrow must clear every node other than its ends. Among the curvatures that do, the one
    chosen runs alongside the fewest points of the arrows already drawn (two arrows leaving a
    node in nearly the same direction would otherwise merge into one line), with a small price
    on curvature so straight arrows win when nothing is in the way. Curving away from the
    cell's centre line is tried first, so long skip edges arc around the outside of the diagram.
    """
    import numpy as np

    p0, p2 = pos[src], pos[dst]
    others = [xy for n, xy in pos.items() if n not in (src, dst)]
    midy = (p0[1] + p2[1]) / 2
    # rad > 0 bends to the right of the travel direction; for a rightward arrow that is down.
    away = -1.0 if (midy > 0 or (midy == 0 and p0[1] >= 0)) else 1.0
    if p2[0] < p0[0]:
        away = -away
    obstacles = np.asarray(others, dtype=float).reshape(-1, 2)
    previous = np.concatenate([np.asarray(c, dtype=float) for c in drawn]) if drawn else np.empty((0, 2))
    best: tuple[float, float] | None = None
    for mag in (0.0, 0.08, 0.15, 0.22, 0.3, 0.38, 0.47, 0.56, 0.7):
        mag += 0.18 * extra
        for sign in (away, -away) if mag else (1.0,):
            rad = sign * mag
            pts = np.asarray(_curve(p0, p2, rad, 24)[1:-1])
            if len(obstacles) and _min_dist(pts, obstacles).min() < _CLEARANCE:
                continue
            near = 0
            if len(previous):
                # Every arrow converges on its end nodes, so closeness there says nothing.
                mid = pts[_min_dist(pts, np.asarray([p0, p2])) > 0.7]
                near = int((_min_dist(mid, previous) < 0.2).sum()) if len(mid) else 0
            cost = near + 6.0 * mag + (0.5 if sign != away else 0.0)
            if best is None or cost < best[0]:
                best = (cost, rad)
    return best[1] if best is not None else away * 0.7


def _min_dist(a: Any, b: Any) -> Any:
    """For each point of ``a`` (n, 2), the distance to the nearest point of ``b`` (m, 2)."""
    import numpy as np

    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Overlap area of two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _place_labels(lay: _CellLayout, renderer: Any, dpi: float) -> None:
    """Put each op label on its own arrow where it covers no node and no other label.

    Label sizes are measured with the real renderer and converted to data units through the
    fixed figure scale, so the collision test matches what is drawn. Labels slide along their
    arrow (and, failing that, sideways off it) until they are free.
    """
    import numpy as np
    from matplotlib.font_manager import FontProperties

    font = FontProperties(size=_LABEL_FONTSIZE)
    pad = 0.08
    taken: list[tuple[float, float, float, float]] = []
    for n, (x, y) in lay.pos.items():
        hw, hh = (_BOX_W / 2, _BOX_H / 2) if n in lay.boxes else (_NODE_RADIUS, _NODE_RADIUS)
        taken.append((x - hw, y - hh, x + hw, y + hh))

    labelled = [a for a in lay.arrows if a.op is not None]
    for a in labelled:
        w, h, _ = renderer.get_text_width_height_descent(a.op, font, ismath=False)
        a.label_wh = (w / dpi / _INCH_PER_UNIT + 2 * pad, h / dpi / _INCH_PER_UNIT + 2 * pad)

    # Sampled arrow curves: a label sitting on another arrow (worst of all at a crossing) reads
    # as if it belonged to that arrow too.
    curves = {id(a): np.asarray(_curve(lay.pos[a.src], lay.pos[a.dst], a.rad, 60)) for a in lay.arrows}

    def length(a: _Arrow) -> float:
        return math.dist(lay.pos[a.src], lay.pos[a.dst])

    # Short arrows have the least room, so they choose first.
    for a in sorted(labelled, key=length):
        p0, p2 = lay.pos[a.src], lay.pos[a.dst]
        hw, hh = a.label_wh[0] / 2, a.label_wh[1] / 2
        foreign = np.concatenate([c for k, c in curves.items() if k != id(a)])
        best: tuple[float, tuple[float, float]] | None = None
        for dy in (0.0, 0.22, -0.22, 0.4, -0.4):
            for t in (0.5, 0.42, 0.58, 0.34, 0.66, 0.27, 0.73):
                x, y = _bezier(p0, p2, a.rad, t)
                y += dy
                box = (x - hw, y - hh, x + hw, y + hh)
                crossed = int(
                    (
                        (foreign[:, 0] > box[0])
                        & (foreign[:, 0] < box[2])
                        & (foreign[:, 1] > box[1])
                        & (foreign[:, 1] < box[3])
                    ).sum()
                )
                # Moving off the arrow costs a little, so on-arrow spots win ties.
                cost = (
                    sum(_overlap(box, o) for o in taken)
                    + 0.02 * crossed
                    + 0.05 * abs(dy)
                    + 0.01 * abs(t - 0.5)
                )
                if best is None or cost < best[0]:
                    best = (cost, (x, y))
            if best is not None and best[0] < 0.02:
                break
        assert best is not None
        a.label_xy = best[1]
        x, y = a.label_xy
        taken.append((x - hw, y - hh, x + hw, y + hh))

    # The drawing's extent: nodes, sampled arrow curves and labels, with a margin.
    xs, ys = [], []
    for box in taken:
        xs += [box[0], box[2]]
        ys += [box[1], box[3]]
    for a in lay.arrows:
        for k in range(11):
            x, y = _bezier(lay.pos[a.src], lay.pos[a.dst], a.rad, k / 10)
            xs.append(x)
            ys.append(y)
    m = 0.3
    lay.extent = (min(xs) - m, max(xs) + m, min(ys) - m, max(ys) + m)


def _exit_points(lay: _CellLayout, a: _Arrow, node: int) -> float:
    """How far (in points) the arrow ``a`` runs inside ``node``'s shape from its centre.

    Passed as the arrow's shrink, this makes it start and end on the node's outline. It stands
    in for matplotlib's patchA/patchB clipping, which gives the same picture but dominates the
    drawing time.
    """
    import numpy as np

    cx, cy = lay.pos[node]
    t = np.linspace(0.0, 0.5, 101)
    if node == a.dst:
        t = 1.0 - t
    pts = np.array([_bezier(lay.pos[a.src], lay.pos[a.dst], a.rad, float(u)) for u in t])
    dx, dy = np.abs(pts[:, 0] - cx), np.abs(pts[:, 1] - cy)
    if node in lay.boxes:
        inside = (dx <= _BOX_W / 2 + 0.03) & (dy <= _BOX_H / 2 + 0.03)
    else:
        inside = np.hypot(dx, dy) <= _NODE_RADIUS + 0.01
    k = int(np.argmin(inside)) if not inside.all() else len(t) - 1  # first point outside
    gap = 1.5  # points of air between an arrow tip and the outline
    return float(np.hypot(dx[k], dy[k])) * _INCH_PER_UNIT * 72 + gap


def _draw_cell(ax: Axes, lay: _CellLayout, colours: dict[str, str]) -> None:
    from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch

    p: Patch
    for n, (x, y) in lay.pos.items():
        if n in lay.boxes:
            colour = "#cfe8cf" if n == _OUT else "#dce6f2"
            p = FancyBboxPatch(
                (x - _BOX_W / 2, y - _BOX_H / 2),
                _BOX_W,
                _BOX_H,
                boxstyle="round,pad=0.02,rounding_size=0.12",
                fc=colour,
                ec="#333333",
                lw=1.2,
                zorder=3,
            )
        else:
            p = Circle((x, y), _NODE_RADIUS, fc="#f7f2c8", ec="#333333", lw=1.2, zorder=3)
        ax.add_patch(p)
        ax.text(x, y, lay.labels[n], ha="center", va="center", fontsize=_NODE_FONTSIZE, zorder=4)

    for a in lay.arrows:
        if a.op is None:
            style: dict[str, Any] = {"color": "#777777", "linestyle": (0, (4, 3)), "lw": 1.1}
        else:
            style = {"color": colours.get(a.op, "#333333"), "lw": 1.6}
            if a.op == "none":
                style["linestyle"] = ":"
        ax.add_patch(
            FancyArrowPatch(
                lay.pos[a.src],
                lay.pos[a.dst],
                connectionstyle=f"arc3,rad={a.rad:.3f}",
                arrowstyle="-|>",
                mutation_scale=12,
                shrinkA=_exit_points(lay, a, a.src),
                shrinkB=_exit_points(lay, a, a.dst),
                zorder=2,
                **style,
            )
        )
        if a.op is not None:
            ax.text(
                *a.label_xy,
                a.op,
                ha="center",
                va="center",
                fontsize=_LABEL_FONTSIZE,
                color=style["color"],
                zorder=5,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.9},
            )
