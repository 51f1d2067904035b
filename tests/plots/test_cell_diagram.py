"""Cell diagrams: the DOT text has the cell's nodes, op-labelled edges and concat edges; the PNG
comes from Graphviz where it is installed and from matplotlib otherwise."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from nasrun.plots.cell_diagram import cell_dot, cell_graph, genotype_dot, plot_cells
from nasrun.space.genotype import Genotype

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_STRING = r'"((?:[^"\\]|\\.)*)"'
_NODE = re.compile(rf"^\s*(\w+) \[label={_STRING}(.*)\];$")
_EDGE = re.compile(r"^\s*(\w+) -> (\w+) \[(.*)\];$")
_LABEL = re.compile(rf"label={_STRING}")


def darts_v2() -> Genotype:
    """DARTS_V2 as published (Liu et al. 2019)."""
    return Genotype(
        normal=(
            ("sep_conv_3x3", 0),
            ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0),
            ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1),
            ("skip_connect", 0),
            ("skip_connect", 0),
            ("dil_conv_3x3", 2),
        ),
        normal_concat=(2, 3, 4, 5),
        reduce=(
            ("max_pool_3x3", 0),
            ("max_pool_3x3", 1),
            ("skip_connect", 2),
            ("max_pool_3x3", 1),
            ("max_pool_3x3", 0),
            ("skip_connect", 2),
            ("skip_connect", 2),
            ("max_pool_3x3", 1),
        ),
        reduce_concat=(2, 3, 4, 5),
    )


def nb201() -> Genotype:
    # Node k has k incoming edges: 1 <- 0; 2 <- 0, 1; 3 <- 0, 1, 2.
    return Genotype(
        normal=(
            ("nor_conv_3x3", 0),
            ("nor_conv_3x3", 0),
            ("skip_connect", 1),
            ("avg_pool_3x3", 0),
            ("none", 1),
            ("nor_conv_1x1", 2),
        ),
        normal_concat=(3,),
        space="nb201",
    )


def parse_dot(text: str, prefix: str = "") -> tuple[dict[str, str], Counter, set[tuple[str, str]]]:
    """Nodes (id -> label), labelled edges (a multiset of (src label, dst label, op)) and the
    unlabelled (concat) edges of the nodes whose id starts with ``prefix``."""
    nodes: dict[str, str] = {}
    edges: Counter = Counter()
    concat: set[tuple[str, str]] = set()
    for line in text.splitlines():
        m = _NODE.match(line)
        if m and m.group(1).startswith(prefix):
            nodes[m.group(1)] = m.group(2).replace('\\"', '"')
    for line in text.splitlines():
        m = _EDGE.match(line)
        if not m or not m.group(1).startswith(prefix):
            continue
        src, dst = nodes[m.group(1)], nodes[m.group(2)]
        label = _LABEL.search(m.group(3))
        if label:
            edges[(src, dst, label.group(1).replace('\\"', '"'))] += 1
        else:
            assert "dashed" in m.group(3), line
            concat.add((src, dst))
    return nodes, edges, concat


def assert_png(path: Path, min_width: int = 100, min_height: int = 100) -> tuple[int, int]:
    """The file is a decodable, non-blank PNG of a plausible size; returns (height, width)."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = imread(path)
    assert img.ndim == 3 and img.shape[1] > min_width and img.shape[0] > min_height
    assert float(img[..., :3].min()) < 0.5
    return img.shape[0], img.shape[1]


@pytest.fixture
def no_graphviz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH without Graphviz's ``dot``, so the PNG is drawn with matplotlib."""
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def fake_dot(folder: Path, exit_code: int = 0) -> Path:
    """A ``dot`` program that saves its stdin and arguments and prints a fixed 'PNG'."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "dot"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys, pathlib\n"
        "here = pathlib.Path(__file__).parent\n"
        "(here / 'stdin.dot').write_bytes(sys.stdin.buffer.read())\n"
        "(here / 'argv.txt').write_text(' '.join(sys.argv[1:]))\n"
        f"sys.stdout.buffer.write(b'\\x89PNG\\r\\n\\x1a\\nfake graphviz output')\n"
        f"sys.exit({exit_code})\n"
    )
    script.chmod(0o755)
    return script


def test_darts_normal_cell_dot() -> None:
    nodes, edges, concat = parse_dot(cell_dot(darts_v2(), "normal"))
    assert sorted(nodes.values()) == sorted(["c_{k-2}", "c_{k-1}", "0", "1", "2", "3", "c_{k}"])
    # By hand from DARTS_V2: two edges per node, inputs 0/1 are c_{k-2}/c_{k-1}, 2.. the nodes 0..
    assert edges == Counter(
        [
            ("c_{k-2}", "0", "sep_conv_3x3"),
            ("c_{k-1}", "0", "sep_conv_3x3"),
            ("c_{k-2}", "1", "sep_conv_3x3"),
            ("c_{k-1}", "1", "sep_conv_3x3"),
            ("c_{k-1}", "2", "sep_conv_3x3"),
            ("c_{k-2}", "2", "skip_connect"),
            ("c_{k-2}", "3", "skip_connect"),
            ("0", "3", "dil_conv_3x3"),
        ]
    )
    assert concat == {("0", "c_{k}"), ("1", "c_{k}"), ("2", "c_{k}"), ("3", "c_{k}")}


def test_darts_reduction_cell_dot() -> None:
    text = cell_dot(darts_v2(), "reduce")
    assert text.startswith('digraph "reduction cell" {') and text.endswith("}\n")
    _, edges, concat = parse_dot(text)
    assert edges == Counter(
        [
            ("c_{k-2}", "0", "max_pool_3x3"),
            ("c_{k-1}", "0", "max_pool_3x3"),
            ("0", "1", "skip_connect"),
            ("c_{k-1}", "1", "max_pool_3x3"),
            ("c_{k-2}", "2", "max_pool_3x3"),
            ("0", "2", "skip_connect"),
            ("0", "3", "skip_connect"),
            ("c_{k-1}", "3", "max_pool_3x3"),
        ]
    )
    assert {dst for _, dst in concat} == {"c_{k}"} and len(concat) == 4


def test_nb201_cell_dot() -> None:
    nodes, edges, concat = parse_dot(cell_dot(nb201()))
    assert sorted(nodes.values()) == ["1", "2", "3", "in", "out"]
    assert edges == Counter(
        [
            ("in", "1", "nor_conv_3x3"),
            ("in", "2", "nor_conv_3x3"),
            ("1", "2", "skip_connect"),
            ("in", "3", "avg_pool_3x3"),
            ("1", "3", "none"),
            ("2", "3", "nor_conv_1x1"),
        ]
    )
    assert concat == {("3", "out")}  # the last node is the cell's output
    with pytest.raises(ValueError, match="no cell"):
        cell_dot(nb201(), "reduce")  # NB-201 has a single cell type


def test_genotype_dot_has_a_cluster_per_cell_with_the_cells_edges() -> None:
    g = darts_v2()
    text = genotype_dot(g, title="DARTS_V2")
    assert 'label="DARTS_V2";' in text
    assert "subgraph cluster_normal {" in text and "subgraph cluster_reduce {" in text
    for cell_type in ("normal", "reduce"):
        _, edges, concat = parse_dot(text, prefix=f"{cell_type}_")
        _, alone, alone_concat = parse_dot(cell_dot(g, cell_type))
        assert edges == alone and concat == alone_concat and sum(edges.values()) == 8
    assert "cluster_reduce" not in genotype_dot(nb201())


def test_labels_are_escaped() -> None:
    g = Genotype(normal=(('we"ird\\op', 0), ("skip_connect", 1)), normal_concat=(2,))
    text = cell_dot(g)
    assert 'label="we\\"ird\\\\op"' in text
    _, edges, _ = parse_dot(text)
    assert ("c_{k-2}", "0", 'we"ird\\\\op') in edges


def test_invalid_cells_are_refused() -> None:
    with pytest.raises(ValueError, match="per_node"):
        cell_graph(darts_v2(), per_node=[2, 2, 2])
    with pytest.raises(ValueError, match="concat node 9 does not exist"):
        cell_graph(Genotype(normal=(("skip_connect", 0), ("skip_connect", 1)), normal_concat=(9,)))
    with pytest.raises(ValueError, match="does not precede it"):
        cell_graph(Genotype(normal=(("skip_connect", 2), ("skip_connect", 1)), normal_concat=(2,)))
    with pytest.raises(ValueError, match="cell_type"):
        cell_graph(darts_v2(), "reduction")


def test_explicit_per_node_regroups_the_edges() -> None:
    # Three nodes fed by 1, 2 and 3 edges instead of DARTS's two each (sources must still precede).
    g = Genotype(
        normal=tuple(("skip_connect", src) for src in (0, 0, 1, 0, 1, 3)),
        normal_concat=(4,),
    )
    graph = cell_graph(g, per_node=[1, 2, 3])
    assert [dst for _, dst, _ in graph.edges] == [2, 3, 3, 4, 4, 4]
    assert graph.labels[4] == "2"


def test_plot_cells_without_graphviz_writes_dot_and_matplotlib_png(tmp_path: Path, no_graphviz: None) -> None:
    out = plot_cells(darts_v2(), tmp_path / "cells.png", title="DARTS_V2")
    assert out == tmp_path / "cells.png"
    assert (tmp_path / "cells.dot").read_text() == genotype_dot(darts_v2(), title="DARTS_V2")
    h, w = assert_png(out, min_width=500)
    # Normal and reduction cells are stacked, so the figure is about as tall as it is wide.
    assert h > 0.7 * w
    h, w = assert_png(plot_cells(nb201(), tmp_path / "nb201.png"), min_width=300)
    assert h < w  # one cell, no reduction panel
    _, edges, concat = parse_dot((tmp_path / "nb201.dot").read_text(), prefix="normal_")
    assert sum(edges.values()) == 6 and concat == {("3", "out")}


def test_plot_cells_renders_with_graphviz_when_it_is_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    fake_dot(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    out = plot_cells(darts_v2(), tmp_path / "out" / "cells.png")
    assert out.read_bytes() == PNG_SIGNATURE + b"fake graphviz output"
    assert (bin_dir / "stdin.dot").read_text() == (tmp_path / "out" / "cells.dot").read_text()
    assert "-Tpng" in (bin_dir / "argv.txt").read_text().split()


def test_a_failing_graphviz_falls_back_to_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    fake_dot(bin_dir, exit_code=1)
    monkeypatch.setenv("PATH", str(bin_dir))
    out = plot_cells(nb201(), tmp_path / "cells.png")
    assert (bin_dir / "stdin.dot").is_file()  # it was asked
    assert_png(out, min_width=300)  # and matplotlib drew the picture


def test_bad_grouping_writes_nothing(tmp_path: Path, no_graphviz: None) -> None:
    with pytest.raises(ValueError, match="per_node"):
        plot_cells(darts_v2(), tmp_path / "bad.png", per_node=[2, 2, 2])
    assert list(tmp_path.glob("bad.*")) == []
