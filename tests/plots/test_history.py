"""The PNG plots: each writes a real image; best-so-far is a running optimum; the sweep's trials
and the one-shot architecture weights reach the figures as the history holds them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from nasrun.bo.store import Trial, TrialState
from nasrun.plots import history
from nasrun.plots.history import (
    arch_weight_grids,
    arch_weight_records,
    best_so_far,
    panel_indices,
    plot_arch_weights,
    plot_convergence,
    plot_trials,
    supernet_edge_labels,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def test_plot_convergence(tmp_path: Path) -> None:
    values = [0.5, 0.4, math.nan, 0.7, 0.6, 0.8]
    assert_png(plot_convergence(values, tmp_path / "conv.png", title="search", maximize=True))
    assert_png(plot_convergence(values, tmp_path / "conv_min.png", ylabel="loss", maximize=False))


def test_missing_folder_is_created_and_no_temp_left(tmp_path: Path) -> None:
    target = tmp_path / "not" / "yet" / "there" / "conv.png"
    assert_png(plot_convergence([1.0, 2.0], target))
    assert_png(plot_convergence([], target.with_name("empty.png")))
    assert sorted(p.name for p in target.parent.iterdir()) == ["conv.png", "empty.png"]


def _pixels(path: Path) -> Any:
    from matplotlib.image import imread

    return imread(path)


def test_convergence_marks_evaluations_without_a_score(tmp_path: Path) -> None:
    values = [0.5, math.nan, 0.7, math.nan, 0.6]
    plain = plot_convergence(values, tmp_path / "plain.png")
    marked = plot_convergence(
        values, tmp_path / "marked.png", xs=[0, 1, 2, 3, 4], states=[None, "failed", None, "running", None]
    )
    assert_png(marked)
    a, b = _pixels(plain), _pixels(marked)
    assert a.shape == b.shape and (a != b).any()  # the marks (and their legend entries) were drawn
    with pytest.raises(ValueError, match="5 values need as many xs and states"):
        plot_convergence(values, tmp_path / "bad.png", states=[None])
    assert not (tmp_path / "bad.png").exists()


def _trial(i: int, state: TrialState, value: float | None) -> Trial:
    return Trial(id=i, params={"x": i}, x=[0.1 * i], state=state, value=value, job=i)


def test_plot_trials_passes_scores_and_states_to_the_convergence_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trials = [
        _trial(0, TrialState.COMPLETED, 3.0),
        _trial(1, TrialState.FAILED, None),
        _trial(2, TrialState.COMPLETED, 1.5),
        _trial(3, TrialState.RUNNING, None),
    ]
    calls: list[dict[str, Any]] = []

    def fake(values: list[float], path: Path, **kwargs: Any) -> Path:
        calls.append({"values": values, "path": path, **kwargs})
        return path

    monkeypatch.setattr(history, "plot_convergence", fake)
    plot_trials(trials, tmp_path / "c.png", direction="minimize")
    (call,) = calls
    assert call["values"][0] == 3.0 and call["values"][2] == 1.5
    assert math.isnan(call["values"][1]) and math.isnan(call["values"][3])
    assert call["xs"] == [0, 1, 2, 3] and call["states"] == [None, "failed", None, "running"]
    assert call["maximize"] is False and call["ylabel"] == "objective (minimize)"


def test_plot_trials_writes_a_png(tmp_path: Path) -> None:
    trials = [_trial(0, TrialState.COMPLETED, 3.0), _trial(1, TrialState.FAILED, None)]
    assert_png(plot_trials(trials, tmp_path / "c.png"))


OPS = ["none", "skip_connect", "sep_conv_3x3"]


def _history(epochs: int, n_edges: int = 5) -> list[dict[str, Any]]:
    """One-shot records as the search writes them: softmaxed weights per cell type, the ops."""
    out = []
    for e in range(1, epochs + 1):
        rows = [[0.2, 0.3, 0.5] if (k + e) % 2 else [0.6, 0.3, 0.1] for k in range(n_edges)]
        out.append({"epoch": e, "val_acc": 10.0 * e, "alphas": {"normal": rows, "edges": {}}, "ops": OPS})
    return out


def test_arch_weight_grids_place_each_weight_under_its_op() -> None:
    history = _history(2)
    columns, grids = arch_weight_grids(history, "normal")
    assert columns == OPS and len(grids) == 2 and grids[0].shape == (5, 3)
    assert grids[0][0].tolist() == [0.2, 0.3, 0.5] and grids[1][0].tolist() == [0.6, 0.3, 0.1]


def test_arch_weight_grids_of_a_staged_search_leave_pruned_ops_empty() -> None:
    # P-DARTS: the second stage keeps two ops per edge, a different pair on each edge.
    first = {"alphas": {"normal": [[0.2, 0.3, 0.5], [0.4, 0.4, 0.2]]}, "ops": OPS}
    second = {
        "alphas": {"normal": [[0.9, 0.1], [0.25, 0.75]]},
        "edge_ops": {"normal": [["sep_conv_3x3", "skip_connect"], ["none", "skip_connect"]]},
    }
    columns, (g1, g2) = arch_weight_grids([first, second], "normal")
    assert columns == OPS
    assert g1.tolist() == [[0.2, 0.3, 0.5], [0.4, 0.4, 0.2]]
    assert math.isnan(g2[0, 0]) and g2[0, 1:].tolist() == [0.1, 0.9]
    assert g2[1, :2].tolist() == [0.25, 0.75] and math.isnan(g2[1, 2])


def test_only_records_with_a_cell_types_weights_count() -> None:
    history = [{"epoch": 0}, *_history(2)]
    assert len(arch_weight_records(history, "normal")) == 2
    assert arch_weight_records(history, "reduce") == []
    assert arch_weight_records(history, "edges") == []  # PC-DARTS's edge weights are no cell


@pytest.mark.parametrize(
    ("n", "max_panels", "expected"),
    [(4, 6, [0, 1, 2, 3]), (11, 6, [0, 2, 4, 6, 8, 10]), (50, 3, [0, 24, 49]), (7, 1, [6])],
)
def test_panel_indices(n: int, max_panels: int, expected: list[int]) -> None:
    assert panel_indices(n, max_panels) == expected


def test_supernet_edge_labels_follow_the_darts_edge_order() -> None:
    assert supernet_edge_labels(5) == [
        "$c_{k-2}$ → 0",
        "$c_{k-1}$ → 0",
        "$c_{k-2}$ → 1",
        "$c_{k-1}$ → 1",
        "0 → 1",
    ]
    assert len(supernet_edge_labels(14)) == 14 and supernet_edge_labels(14)[-1] == "2 → 3"
    assert supernet_edge_labels(4) == ["edge 0", "edge 1", "edge 2", "edge 3"]


def test_plot_arch_weights(tmp_path: Path) -> None:
    h, w = assert_png(plot_arch_weights(_history(9), "normal", tmp_path / "alphas.png"))
    h2, w2 = assert_png(plot_arch_weights(_history(1), "normal", tmp_path / "one.png"))
    assert w > 1.5 * w2  # six panels side by side in rows of three, against one
    with pytest.raises(ValueError, match="reduce cell"):
        plot_arch_weights(_history(2), "reduce", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
