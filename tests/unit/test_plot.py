from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from orchestrator.plot import EpochPoint, Marker, PlotData, figure, plot_data, render

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(epoch: int, offset: float = 0.0) -> dict[str, float]:
    return {
        "loss": 2.0 / (epoch + 1) + offset,
        "val_loss": 2.2 / (epoch + 1) + offset,
        "accuracy": 0.5 + 0.04 * epoch - offset,
        "val_accuracy": 0.45 + 0.04 * epoch - offset,
        "auc": 0.6 + 0.03 * epoch,
        "val_auc": 0.55 + 0.03 * epoch,
    }


def _run() -> tuple[list[EpochPoint], list[Marker]]:
    """12 epochs: stopped after epoch 4 and resumed; epochs 5-6 trained, then a preemption and a resume from the
    backup after epoch 4 (the newer one damaged), which supersedes them; the LR drops 0.1 -> 0.01 at epoch 9."""
    points = [EpochPoint(epoch=e, learning_rate=0.1, metrics=_metrics(e), segment=0) for e in range(4)]
    points += [
        EpochPoint(epoch=e, learning_rate=0.1, metrics=_metrics(e, 0.3), superseded=True, segment=1) for e in (4, 5)
    ]
    points += [
        EpochPoint(epoch=e, learning_rate=0.1 if e < 8 else 0.01, metrics=_metrics(e), segment=2) for e in range(4, 12)
    ]
    markers = [
        Marker(epoch=4, kind="stop", label="stopped"),
        Marker(epoch=4, kind="resume", label="resumed"),
        Marker(epoch=6.5, kind="preemption", label="preempted"),
        Marker(epoch=4, kind="resume", label="resumed from e00004"),
    ]
    return points, markers


def _live(points: list[EpochPoint], name: str) -> list[float]:
    return [p.metrics[name] for p in sorted(points, key=lambda p: p.epoch) if not p.superseded]


def _line(fig: Figure, label: str) -> Line2D:
    found = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == label]
    assert len(found) == 1, f"{label!r}: {len(found)} lines"
    return found[0]


def _xy(line: Line2D) -> tuple[list[float], list[float]]:
    x: list[float] = np.asarray(line.get_xdata(), dtype=float).tolist()
    y: list[float] = np.asarray(line.get_ydata(), dtype=float).tolist()
    return x, y


def _curve_labels(ax: Axes) -> list[str]:
    return [str(line.get_label()) for line in ax.get_lines() if not str(line.get_gid()).startswith("marker:")]


@pytest.fixture
def data() -> PlotData:
    points, markers = _run()
    return plot_data("resnet-spot", points, markers)


def test_default_curves_are_loss_and_accuracy_with_their_validation() -> None:
    points, markers = _run()
    data = plot_data("job", points, markers)
    assert list(data.lines) == ["loss", "val_loss", "accuracy", "val_accuracy"]
    assert list(data.superseded) == ["loss", "val_loss", "accuracy", "val_accuracy"]


def test_live_and_superseded_curves_hold_the_history_values(data: PlotData) -> None:
    points, _ = _run()
    assert data.lines["val_loss"] == ([float(x) for x in range(1, 13)], _live(points, "val_loss"))
    assert data.superseded["loss"] == ([5.0, 6.0], [_metrics(4, 0.3)["loss"], _metrics(5, 0.3)["loss"]])


def test_learning_rate_is_one_value_per_live_epoch(data: PlotData) -> None:
    assert data.learning_rate == ([float(x) for x in range(1, 13)], [0.1] * 8 + [0.01] * 4)


def test_lr_change_marker_is_derived_and_merged_in_x_order(data: PlotData) -> None:
    assert [(m.epoch, m.kind, m.label) for m in data.markers] == [
        (4, "stop", "stopped"),
        (4, "resume", "resumed"),
        (4, "resume", "resumed from e00004"),
        (6.5, "preemption", "preempted"),
        (8, "lr", "lr 0.1→0.01"),
    ]


def test_a_given_lr_marker_replaces_the_derived_one() -> None:
    points, _ = _run()
    given = Marker(epoch=8, kind="lr", label="ReduceLROnPlateau: lr 0.1→0.01")
    assert plot_data("job", points, [given]).markers == [given]


def test_another_event_at_the_lr_change_keeps_the_lr_marker() -> None:
    points, _ = _run()
    stop = Marker(epoch=8, kind="stop", label="stopped")
    assert [m.kind for m in plot_data("job", points, [stop]).markers] == ["stop", "lr"]


def test_phase_switch_gets_a_marker() -> None:
    points = [
        EpochPoint(epoch=e, learning_rate=0.1, metrics={"loss": 1.0}, phase="head" if e < 3 else "all")
        for e in range(5)
    ]
    markers = plot_data("job", points, []).markers
    assert [(m.epoch, m.kind, m.label) for m in markers] == [(3, "phase", "phase head→all")]


def _abandoned(segment: int, epochs: tuple[int, ...]) -> list[EpochPoint]:
    return [
        EpochPoint(epoch=e, learning_rate=0.1, metrics={"loss": 10.0 * segment + e}, superseded=True, segment=segment)
        for e in epochs
    ]


def test_two_abandoned_branches_over_the_same_epochs_are_not_joined() -> None:
    points = [EpochPoint(epoch=e, learning_rate=0.1, metrics={"loss": float(e)}) for e in range(6)]
    points += _abandoned(1, (2, 3)) + _abandoned(2, (3, 4))
    x, y = plot_data("job", points, []).superseded["loss"]
    assert x[:2] == [3.0, 4.0] and math.isnan(x[2]) and x[3:] == [4.0, 5.0]
    assert y[:2] == [12.0, 13.0] and math.isnan(y[2]) and y[3:] == [23.0, 24.0]


def test_an_abandoned_branch_that_spans_two_segments_stays_one_line() -> None:
    points = [EpochPoint(epoch=e, learning_rate=0.1, metrics={"loss": float(e)}) for e in range(6)]
    points += _abandoned(1, (2, 3)) + _abandoned(2, (4,))
    assert plot_data("job", points, []).superseded["loss"] == ([3.0, 4.0, 5.0], [12.0, 13.0, 24.0])


def test_a_gap_in_an_abandoned_branch_breaks_its_line() -> None:
    x, _ = plot_data("job", _abandoned(1, (2, 4)), []).superseded["loss"]
    assert x[0] == 3.0 and math.isnan(x[1]) and x[2] == 5.0


def test_unknown_metric_names_the_available_ones() -> None:
    points, markers = _run()
    with pytest.raises(ValueError, match="unknown metric 'f1'; available: accuracy, auc, loss, val_accuracy, val_auc"):
        plot_data("job", points, markers, metrics=["f1"])


def test_two_live_points_for_one_epoch_are_refused() -> None:
    points = [EpochPoint(epoch=3, learning_rate=0.1, metrics={"loss": 1.0})] * 2
    with pytest.raises(ValueError, match="two live history points for epoch 3"):
        plot_data("job", points, [])


def test_marker_kind_is_checked() -> None:
    with pytest.raises(ValueError, match="Received: kind='reboot'"):
        Marker(epoch=1, kind="reboot", label="x")  # type: ignore[arg-type]


def test_figure_lines_carry_the_history(data: PlotData) -> None:
    fig = figure(data)
    for name, (x, y) in data.lines.items():
        line = _line(fig, name)
        assert _xy(line) == (x, y)
    faint = _line(fig, "val_accuracy (superseded)")
    assert _xy(faint) == data.superseded["val_accuracy"]


def test_losses_and_accuracies_get_their_own_panels_on_one_x_axis(data: PlotData) -> None:
    fig = figure(data)
    losses, others = (ax for ax in fig.axes if ax.get_ylabel() != "learning rate")
    assert _curve_labels(losses) == ["loss", "loss (superseded)", "val_loss", "val_loss (superseded)"]
    assert _curve_labels(others)[::2] == ["accuracy", "val_accuracy"]
    assert losses.get_shared_x_axes().joined(losses, others)


def test_superseded_branch_is_drawn_faintly(data: PlotData) -> None:
    fig = figure(data)
    faint, live = _line(fig, "loss (superseded)"), _line(fig, "loss")
    alpha = faint.get_alpha()
    assert alpha is not None and alpha < 1
    assert faint.get_linestyle() == "--" and live.get_linestyle() == "-"
    assert live.get_alpha() in (None, 1)
    assert faint.get_color() == live.get_color()


def test_learning_rate_is_a_log_step_line_on_a_twin_axis(data: PlotData) -> None:
    fig = figure(data)
    (twin,) = (ax for ax in fig.axes if ax.get_ylabel() == "learning rate")
    (line,) = twin.get_lines()
    assert _xy(line) == data.learning_rate
    assert line.get_drawstyle() == "steps-pre"
    assert twin.get_yscale() == "log"
    assert twin.get_shared_x_axes().joined(twin, fig.axes[0])


def test_markers_are_vertical_lines_at_their_x_on_every_panel(data: PlotData) -> None:
    fig = figure(data)
    expected = [
        ("marker:lr", 8.0),
        ("marker:preemption", 6.5),
        ("marker:resume", 4.0),
        ("marker:resume", 4.0),
        ("marker:stop", 4.0),
    ]
    for ax in fig.axes[:2]:
        vertical = [line for line in ax.get_lines() if str(line.get_gid()).startswith("marker:")]
        assert sorted((str(line.get_gid()), _xy(line)[0][0]) for line in vertical) == expected
        assert all(_xy(line)[0][0] == _xy(line)[0][1] for line in vertical)
    labels = [(text.get_position()[0], text.get_text()) for ax in fig.axes for text in ax.texts]
    assert labels == [(4, "stopped / resumed / resumed from e00004"), (6.5, "preempted"), (8, "lr 0.1→0.01")]


def test_metrics_auc_draws_auc_and_its_validation_only() -> None:
    points, markers = _run()
    data = plot_data("job", points, markers, metrics=["auc"])
    assert list(data.lines) == ["auc", "val_auc"]
    fig = figure(data)
    curves = [label for ax in fig.axes for label in _curve_labels(ax) if label != "learning rate"]
    assert sorted(curves) == ["auc", "auc (superseded)", "val_auc", "val_auc (superseded)"]
    assert _xy(_line(fig, "auc"))[1][-1] == pytest.approx(0.6 + 0.03 * 11)


def test_render_writes_a_png_to_a_path_and_a_file_object(data: PlotData, tmp_path: Path) -> None:
    from matplotlib import pyplot

    open_before = pyplot.get_fignums()
    path = tmp_path / "run.png"
    render(data, path)
    buffer = io.BytesIO()
    render(data, buffer)
    assert path.read_bytes()[:8] == PNG_MAGIC and buffer.getvalue()[:8] == PNG_MAGIC
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 0 and width > 0
    assert pyplot.get_fignums() == open_before


def test_an_empty_history_still_renders(tmp_path: Path) -> None:
    render(plot_data("new-job", [], []), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC


def test_a_diverged_run_draws_its_finite_part_and_the_rest_as_a_gap(tmp_path: Path) -> None:
    metrics = [
        {"loss": 1.0, "val_loss": 1.1},
        {"loss": 0.8, "val_loss": math.inf},
        {"loss": math.nan, "val_loss": -math.inf},
    ]
    points = [EpochPoint(epoch=e, learning_rate=10.0, metrics=m) for e, m in enumerate(metrics)]
    data = plot_data("diverged", points, [])
    x, y = data.lines["loss"]
    assert x == [1.0, 2.0, 3.0] and y[:2] == [1.0, 0.8] and math.isnan(y[2])
    _, val = data.lines["val_loss"]
    assert val[0] == 1.1 and all(math.isnan(v) for v in val[1:])  # an infinity would wreck the axis: a gap
    fig = figure(data)
    bottom, top = fig.axes[0].get_ylim()
    assert math.isfinite(bottom) and math.isfinite(top) and top < 10
    render(data, tmp_path / "diverged.png")
    assert (tmp_path / "diverged.png").read_bytes().startswith(PNG_MAGIC)
