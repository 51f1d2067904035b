"""Cell diagrams: a genotype's cells as Graphviz DOT text and as a PNG.

``cell_graph`` turns one cell of a genotype into a graph: the cell inputs (``c_{k-2}`` and
``c_{k-1}`` in the DARTS cell space, ``in`` in NAS-Bench-201), the intermediate nodes, the cell
output (``c_{k}``, ``out``), one edge per chosen operation labelled with the op's name, and an
unlabelled edge from every concatenated node to the output. ``cell_dot`` and ``genotype_dot``
write that graph in the DOT language, and ``plot_cells`` writes ``NAME.dot`` next to ``NAME.png``.

The PNG is rendered by Graphviz's ``dot`` program when it is on ``PATH``; without it (Graphviz is
not a dependency of nasrun) the cells are laid out and drawn with matplotlib here: inputs on the
left, nodes in a zigzag in the middle, the output on the right, edges curved around nodes they
would cross and op labels placed where they cover nothing else. Files are written through
``nasrun.run_folder``, so a reader (or a crash) never sees half of one.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasrun.plots import save_png
from nasrun.run_folder import atomic_write, write_text_atomic
from nasrun.space.genotype import Genotype, edges_by_node

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: Node id of the cell output in a ``CellGraph``.
OUTPUT = -1

#: The cell types of a genotype, with the names their panels and clusters carry.
CELL_TYPES = {"normal": "normal cell", "reduce": "reduction cell"}

# Layout of a matplotlib cell diagram, in data units; the figure is sized from the data extent at a
# fixed scale so that fonts and boxes look the same whatever the cell size.
_INCH_PER_UNIT = 0.95
_X_GAP = 2.1  # horizontal distance between consecutive columns (inputs, nodes, output)
_ZIGZAG = 0.85  # vertical offset of intermediate nodes, alternating up/down
_INPUT_SPREAD = 1.9  # vertical distance of the two DARTS inputs from the centre line
_NODE_RADIUS = 0.34
_BOX_W, _BOX_H = 0.95, 0.56
_CLEARANCE = 0.52  # an edge passing closer than this to another node's centre gets curved
_LABEL_FONTSIZE = 7.5
_NODE_FONTSIZE = 11
_INPUT_FILL, _NODE_FILL, _OUTPUT_FILL = "#dce6f2", "#f7f2c8", "#cfe8cf"
_CONCAT_COLOUR = "#777777"
_DOT_TIMEOUT_S = 60


@dataclass(frozen=True)
class CellGraph:
    """One cell of a genotype as a graph.

    Node ids follow the genotype's numbering: ``0`` (and ``1``) are the cell inputs, then the
    intermediate nodes; the output is ``OUTPUT``.

    Attributes:
        name: what the cell is called in a figure (``normal cell``, ``reduction cell``, ``cell``).
        labels: node id -> label, inputs first, then the intermediate nodes, then the output.
        n_inputs: cell inputs: 2 in the DARTS cell space, 1 in NAS-Bench-201.
        edges: ``(src, dst, op)`` for every chosen operation, in genotype order.
        concat: the nodes concatenated into (for NAS-Bench-201: passed on as) the output.
    """

    name: str
    labels: dict[int, str]
    n_inputs: int
    edges: tuple[tuple[int, int, str], ...]
    concat: tuple[int, ...]


def cell_graph(
    genotype: Genotype, cell_type: str = "normal", per_node: Sequence[int] | None = None
) -> CellGraph:
    """The graph of one cell of ``genotype``.

    Args:
        genotype: the architecture.
        cell_type: ``normal`` or ``reduce``.
        per_node: number of incoming edges of each intermediate node, in node order. Defaults to
            the genotype's own (``normal_nodes`` / ``reduce_nodes``) where it has them, else
            ``1, 2, 3, ...`` for ``space == "nb201"`` and 2 per node otherwise (DARTS cells).

    Returns:
        The cell's nodes, labelled edges and concatenated nodes.

    Raises:
        ValueError: an unknown or empty cell type, ``per_node`` not accounting for the cell's
            edges, an edge from a node that does not precede its target, or a concat node that
            does not exist.
    """
    if cell_type not in CELL_TYPES:
        raise ValueError(f"cell_type must be one of {sorted(CELL_TYPES)}, got {cell_type!r}")
    edges, concat, own = genotype.cell(cell_type)
    nb201 = genotype.space == "nb201"
    name = "cell" if nb201 else CELL_TYPES[cell_type]
    if not edges and not own:
        raise ValueError(f"the genotype has no {name}")
    if per_node is not None:
        counts = list(per_node)
    else:
        counts = list(own) if own else _default_per_node(len(edges), nb201)
    if sum(counts) != len(edges):
        raise ValueError(
            f"{name}: per_node {counts} accounts for {sum(counts)} edges, the cell has {len(edges)}"
        )
    # NB-201 numbers its single input 0 and the nodes 1, 2, 3; DARTS has two inputs (the previous
    # two cells) and numbers its intermediate nodes from 0 although their indices start at 2.
    n_in = 1 if nb201 else 2
    labels = {0: "in"} if nb201 else {0: "c_{k-2}", 1: "c_{k-1}"}
    for i in range(len(counts)):
        labels[n_in + i] = str(i + 1 if nb201 else i)
    labels[OUTPUT] = "out" if nb201 else "c_{k}"
    triples: list[tuple[int, int, str]] = []
    for i, node_edges in enumerate(edges_by_node(edges, counts)):
        dst = n_in + i
        for op, src in node_edges:
            if src >= dst:
                raise ValueError(f"{name}: node {labels[dst]} takes input {src}, which does not precede it")
            triples.append((src, dst, op))
    # A cell without an explicit concat list outputs its last node (NB-201).
    outs = tuple(concat) if concat else (n_in + len(counts) - 1,)
    for c in outs:
        if c not in labels or c == OUTPUT:
            raise ValueError(f"{name}: concat node {c} does not exist")
    return CellGraph(name, labels, n_in, tuple(triples), outs)


def cell_dot(genotype: Genotype, cell_type: str = "normal", per_node: Sequence[int] | None = None) -> str:
    """One cell of ``genotype`` as a Graphviz digraph (DOT text).

    Node ids are ``in0``, ``in1`` (the cell inputs), ``n2``, ``n3``, ... (the intermediate nodes,
    by their index in the genotype) and ``out``; each node is labelled as in ``cell_graph``. An
    operation is an edge labelled with its name; concatenation into the output is a dashed edge
    without a label. Render it with, for instance, ``dot -Tpdf cell.dot -o cell.pdf``.

    Args:
        genotype: the architecture.
        cell_type: ``normal`` or ``reduce``.
        per_node: see ``cell_graph``.

    Returns:
        The DOT text, ending with a newline.

    Raises:
        ValueError: as ``cell_graph``.
    """
    graph = cell_graph(genotype, cell_type, per_node)
    colours = _op_colours(sorted(genotype.ops()))
    lines = [f"digraph {_quote(graph.name)} {{", *_graph_defaults("  ")]
    lines += _cell_statements(graph, "", colours, "  ")
    return "\n".join([*lines, "}"]) + "\n"


def genotype_dot(genotype: Genotype, per_node: Sequence[int] | None = None, title: str | None = None) -> str:
    """Every cell of ``genotype`` in one Graphviz digraph, a cluster per cell type (DOT text).

    Node ids carry the cell type as a prefix (``normal_in0``, ``reduce_n3``, ``normal_out``);
    otherwise they, their labels and the edges are those of ``cell_dot``.

    Args:
        genotype: the architecture.
        per_node: see ``cell_graph``.
        title: the graph's label; defaults to the genotype's space name.

    Returns:
        The DOT text, ending with a newline.

    Raises:
        ValueError: as ``cell_graph``.
    """
    colours = _op_colours(sorted(genotype.ops()))
    lines = ["digraph genotype {", *_graph_defaults("  ")]
    lines.append(f"  label={_quote(title if title is not None else f'genotype ({genotype.space})')};")
    lines.append("  labelloc=t;")
    for cell_type in _cell_types(genotype):
        graph = cell_graph(genotype, cell_type, per_node)
        lines.append(f"  subgraph cluster_{cell_type} {{")
        lines.append(f"    label={_quote(graph.name)};")
        lines.append('    style="rounded"; color="#bbbbbb";')
        lines += _cell_statements(graph, f"{cell_type}_", colours, "    ")
        lines.append("  }")
    return "\n".join([*lines, "}"]) + "\n"


def plot_cells(
    genotype: Genotype,
    path: str | Path,
    per_node: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """Draw the genotype's cells into a PNG, and write their DOT text next to it.

    ``path`` with the suffix ``.dot`` receives ``genotype_dot``'s text. The PNG is that text
    rendered by Graphviz's ``dot`` where the program is on ``PATH`` and succeeds; otherwise it is
    drawn with matplotlib, one panel per cell type: each edge an arrow coloured and labelled with
    its operation, curved around the nodes it would cross, and dashed arrows from the
    concatenated nodes to the output.

    Args:
        genotype: the architecture to draw.
        path: PNG file to write; missing parent folders are created.
        per_node: see ``cell_graph``.
        title: figure title; defaults to the genotype's space name.

    Returns:
        The PNG's path.

    Raises:
        ValueError: as ``cell_graph``; nothing is written then.
    """
    path = Path(path)
    graphs = [cell_graph(genotype, t, per_node) for t in _cell_types(genotype)]
    title = title if title is not None else f"genotype ({genotype.space})"
    dot = genotype_dot(genotype, per_node, title)
    write_text_atomic(path.with_suffix(".dot"), dot)
    png = _render_with_graphviz(dot)
    if png is not None:
        return atomic_write(path, lambda f: f.write(png))
    return _plot_with_matplotlib(genotype, graphs, path, title)


# --------------------------------------------------------------------------------------------
# DOT


def _cell_types(genotype: Genotype) -> list[str]:
    return ["normal", "reduce"] if genotype.reduce or genotype.reduce_nodes else ["normal"]


def _quote(text: str) -> str:
    """``text`` as a DOT string (double-quoted, with quotes and backslashes escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _graph_defaults(indent: str) -> list[str]:
    return [
        f"{indent}rankdir=LR;",
        f'{indent}node [fontname="Helvetica", fontsize=12];',
        f'{indent}edge [fontname="Helvetica", fontsize=10];',
    ]


def _node_id(graph: CellGraph, node: int, prefix: str) -> str:
    if node == OUTPUT:
        return f"{prefix}out"
    return f"{prefix}in{node}" if node < graph.n_inputs else f"{prefix}n{node}"


def _cell_statements(graph: CellGraph, prefix: str, colours: dict[str, str], indent: str) -> list[str]:
    """The node and edge statements of one cell; node ids start with ``prefix``."""
    lines = []
    for node, label in graph.labels.items():
        if node == OUTPUT or node < graph.n_inputs:
            fill = _OUTPUT_FILL if node == OUTPUT else _INPUT_FILL
            attrs = f'shape=box, style="rounded,filled", fillcolor="{fill}"'
        else:
            attrs = f'shape=circle, style=filled, fillcolor="{_NODE_FILL}"'
        lines.append(f"{indent}{_node_id(graph, node, prefix)} [label={_quote(label)}, {attrs}];")
    for src, dst, op in graph.edges:
        colour = colours.get(op, "#333333")
        style = ", style=dotted" if op == "none" else ""
        lines.append(
            f"{indent}{_node_id(graph, src, prefix)} -> {_node_id(graph, dst, prefix)} "
            f'[label={_quote(op)}, color="{colour}", fontcolor="{colour}"{style}];'
        )
    for c in graph.concat:
        lines.append(
            f"{indent}{_node_id(graph, c, prefix)} -> {_node_id(graph, OUTPUT, prefix)} "
            f'[style=dashed, color="{_CONCAT_COLOUR}"];'
        )
    return lines


def _render_with_graphviz(dot: str) -> bytes | None:
    """``dot`` rendered as PNG by Graphviz, or ``None`` where it is not installed or fails."""
    program = shutil.which("dot")
    if program is None:
        return None
    try:
        proc = subprocess.run(
            [program, "-Tpng", "-Gdpi=110"],
            input=dot.encode("utf-8"),
            capture_output=True,
            timeout=_DOT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or not proc.stdout.startswith(b"\x89PNG"):
        return None
    return proc.stdout


# --------------------------------------------------------------------------------------------
# matplotlib


def _plot_with_matplotlib(genotype: Genotype, graphs: Sequence[CellGraph], path: Path, title: str) -> Path:
    """The cell diagram drawn with matplotlib, one panel per cell, written as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layouts = [_layout_cell(graph) for graph in graphs]
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
    fig.suptitle(title, fontsize=12, y=0.995)
    return save_png(fig, path)


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


def _layout_cell(graph: CellGraph) -> _CellLayout:
    """Place the nodes of ``graph`` and choose a curvature for every arrow."""
    n_in = graph.n_inputs
    n_nodes = len(graph.labels) - n_in - 1
    pos: dict[int, tuple[float, float]] = {}
    if n_in == 1:
        pos[0] = (0.0, 0.0)
    else:
        pos[0], pos[1] = (0.0, _INPUT_SPREAD), (0.0, -_INPUT_SPREAD)
    for i in range(n_nodes):
        # Alternating heights keep an edge between two non-adjacent nodes from running straight
        # through the nodes between them, which a single row would force.
        pos[n_in + i] = (_X_GAP * (i + 1), _ZIGZAG if i % 2 == 0 else -_ZIGZAG)
    pos[OUTPUT] = (_X_GAP * (n_nodes + 1), 0.0)
    # Subscripted labels (c_{k-2}) as matplotlib mathtext.
    labels = {n: f"${label}$" if "_" in label else label for n, label in graph.labels.items()}

    arrows: list[_Arrow] = []
    seen: dict[tuple[int, int], int] = {}
    drawn: list[list[tuple[float, float]]] = []  # sampled curves of the arrows placed so far
    for src, dst, op in graph.edges:
        # A repeated (src, dst) pair would draw on top of its twin; fan repeats apart.
        k = seen.get((src, dst), 0)
        seen[(src, dst)] = k + 1
        arrows.append(_Arrow(src, dst, _choose_rad(pos, src, dst, drawn, extra=k), op))
        drawn.append(_curve(pos[src], pos[dst], arrows[-1].rad, 60))
    for c in graph.concat:
        arrows.append(_Arrow(c, OUTPUT, _choose_rad(pos, c, OUTPUT, drawn)))
        drawn.append(_curve(pos[c], pos[OUTPUT], arrows[-1].rad, 60))
    return _CellLayout(graph.name, pos, labels, {*range(n_in), OUTPUT}, arrows)


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
            colour = _OUTPUT_FILL if n == OUTPUT else _INPUT_FILL
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
            p = Circle((x, y), _NODE_RADIUS, fc=_NODE_FILL, ec="#333333", lw=1.2, zorder=3)
        ax.add_patch(p)
        ax.text(x, y, lay.labels[n], ha="center", va="center", fontsize=_NODE_FONTSIZE, zorder=4)

    for a in lay.arrows:
        if a.op is None:
            style: dict[str, Any] = {"color": _CONCAT_COLOUR, "linestyle": (0, (4, 3)), "lw": 1.1}
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
