"""The PNG plots: each writes a real image, and the best-so-far helper is a running optimum."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nasrun.report.plots import best_so_far, plot_cells, plot_convergence, plot_training_curves
from nasrun.space.genotype import Genotype

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def assert_png(path: Path, min_width: int = 100, min_height: int = 100) -> tuple[int, int]:
    """The file is a decodable PNG of a plausible size; returns (height, width)."""
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    img = imread(path)
    assert img.ndim == 3 and img.shape[1] > min_width and img.shape[0] > min_height
    # Not a blank canvas: something was drawn.
    assert float(img[..., :3].min()) < 0.5
    return img.shape[0], img.shape[1]


def test_best_so_far_maximize_is_running_max() -> None:
    assert best_so_far([0.3, 0.1, 0.5, 0.4, 0.9], maximize=True) == [0.3, 0.3, 0.5, 0.5, 0.9]


def test_best_so_far_minimize_is_running_min() -> None:
    assert best_so_far([3.0, 4.0, 1.0, 2.0, 0.5], maximize=False) == [3.0, 3.0, 1.0, 1.0, 0.5]


def test_best_so_far_ignores_failed_evaluations() -> None:
    out = best_so_far([math.nan, 0.2, math.inf, math.nan, 0.1], maximize=True)
    assert math.isnan(out[0])
    assert out[1:] == [0.2, 0.2, 0.2, 0.2]
    assert best_so_far([], maximize=False) == []


@pytest.mark.parametrize("maximize", [True, False])
def test_best_so_far_is_monotone(maximize: bool) -> None:
    values = [math.sin(3.7 * i) * (i % 5) for i in range(50)]
    best = best_so_far(values, maximize)
    pairs = list(zip(best[:-1], best[1:], strict=True))
    assert all((b >= a) if maximize else (b <= a) for a, b in pairs)
    assert best[-1] == (max(values) if maximize else min(values))


def test_plot_cells_darts_v2_has_two_panels(tmp_path: Path) -> None:
    out = plot_cells(darts_v2(), tmp_path / "cells.png", title="DARTS_V2")
    assert out == tmp_path / "cells.png"
    h, w = assert_png(out, min_width=500)
    # Normal and reduction cells are stacked, so the figure is about as tall as it is wide.
    assert h > 0.7 * w


def test_plot_cells_nb201_single_panel(tmp_path: Path) -> None:
    h, w = assert_png(plot_cells(nb201(), tmp_path / "nb201.png"), min_width=300)
    assert h < w  # one cell, no reduction panel


def test_plot_cells_explicit_per_node_and_bad_grouping(tmp_path: Path) -> None:
    g = darts_v2()
    assert_png(plot_cells(g, tmp_path / "ok.png", per_node=[2, 2, 2, 2]))
    with pytest.raises(ValueError, match="per_node"):
        plot_cells(g, tmp_path / "bad.png", per_node=[2, 2, 2])
    assert not (tmp_path / "bad.png").exists()


def test_plot_convergence(tmp_path: Path) -> None:
    values = [0.5, 0.4, math.nan, 0.7, 0.6, 0.8]
    assert_png(plot_convergence(values, tmp_path / "conv.png", title="search", maximize=True))
    assert_png(plot_convergence(values, tmp_path / "conv_min.png", ylabel="loss", maximize=False))


def test_plot_training_curves_skips_missing_keys(tmp_path: Path) -> None:
    history = [{"epoch": e, "train_acc": 0.5 + 0.05 * e, "val_acc": 0.4 + 0.04 * e} for e in range(6)]
    history[2].pop("val_acc")
    out = plot_training_curves(history, tmp_path / "curves.png")  # test_acc is absent throughout
    assert_png(out)


def test_missing_folder_is_created_and_no_temp_left(tmp_path: Path) -> None:
    target = tmp_path / "not" / "yet" / "there" / "conv.png"
    assert_png(plot_convergence([1.0, 2.0], target))
    assert_png(plot_training_curves([], target.with_name("empty.png")))
    assert sorted(p.name for p in target.parent.iterdir()) == ["conv.png", "empty.png"]
