"""One picture of a whole training run: metric curves, learning rate and events across stops and preemptions.

Pure: no Ray, no TensorFlow, no store. :func:`plot_data` turns history points and event markers into plain
numbers (testable without drawing); :func:`figure` draws them; :func:`render` writes a PNG.

The x axis counts epochs completed, so the point of 0-based epoch ``e`` sits at ``x = e + 1`` (the axis shows
the usual 1-based epoch numbers) and an event sits at the number of epochs completed when it happened: the
boundary after epoch ``e`` is ``x = e + 1`` and a preemption halfway through epoch ``e`` is ``x = e + 1.5``.

Example:
    >>> points = [EpochPoint(epoch=e, learning_rate=0.1 if e < 8 else 0.01, metrics={"loss": 1 / (e + 1)})
    ...           for e in range(12)]
    >>> data = plot_data("demo", points, [Marker(epoch=5, kind="preemption", label="preempted")])
    >>> [(m.epoch, m.label) for m in data.markers]
    [(5, 'preempted'), (8, 'lr 0.1→0.01')]
    >>> render(data, "demo.png")  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, get_args

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

MarkerKind = Literal["lr", "stop", "resume", "preemption", "failure", "phase"]
MARKER_KINDS: tuple[str, ...] = get_args(MarkerKind)
DEFAULT_METRICS = ("loss", "accuracy")
SUPERSEDED_ALPHA = 0.3
LEARNING_RATE_LABEL = "learning rate"
_MARKER_STYLE: dict[str, tuple[str, str]] = {  # kind -> (colour, line style)
    "lr": ("tab:purple", "-."),
    "stop": ("tab:gray", "--"),
    "resume": ("tab:green", "--"),
    "preemption": ("tab:red", "-"),
    "failure": ("black", "-"),
    "phase": ("tab:blue", ":"),
}
Curve = tuple[list[float], list[float]]


@dataclass(frozen=True)
class EpochPoint:
    """One line of a job's history: an epoch as it ended (``epoch`` is 0-based)."""

    epoch: int
    learning_rate: float
    metrics: dict[str, float]
    superseded: bool = False  # from a branch abandoned by a resume from an earlier epoch: drawn faintly
    segment: int = 0
    phase: str | None = None

    def __post_init__(self) -> None:
        if self.epoch < 0:
            raise ValueError(f"Invalid value for `epoch`. Received: epoch={self.epoch}. Expected 0 or more (0-based).")


@dataclass(frozen=True)
class Marker:
    """An event drawn as a vertical line at ``epoch`` = epochs completed when it happened (fractional mid-epoch)."""

    epoch: float
    kind: MarkerKind
    label: str

    def __post_init__(self) -> None:
        if not math.isfinite(self.epoch) or self.epoch < 0:
            raise ValueError(f"Invalid value for `epoch`. Received: epoch={self.epoch}. Expected a number >= 0.")
        if self.kind not in MARKER_KINDS:
            expected = ", ".join(MARKER_KINDS)
            raise ValueError(f"Invalid value for `kind`. Received: kind={self.kind!r}. Expected one of {expected}.")


@dataclass(frozen=True)
class PlotData:
    """Everything :func:`figure` draws, as plain numbers; x values follow the module's epochs-completed axis.

    A superseded curve holds every abandoned branch; branches are separated by a ``nan`` in both x and y so
    the line breaks between them instead of joining two branches.
    """

    title: str
    lines: dict[str, Curve]
    superseded: dict[str, Curve]
    learning_rate: Curve
    markers: list[Marker] = field(default_factory=list)


def plot_data(
    title: str, points: list[EpochPoint], markers: list[Marker], metrics: list[str] | None = None
) -> PlotData:
    """Select the curves to draw and derive the learning-rate and phase markers of the live branch.

    Args:
        title: the figure's title, usually the job's name.
        points: the job's history in any order; live points must have distinct epochs.
        markers: events (stops, resumes, preemptions, failures) from the caller.
        metrics: metric names to draw, each with its ``val_`` counterpart when present. ``None`` or empty draws
            loss and accuracy (train and val) when present, otherwise every metric present.

    Raises:
        ValueError: a requested metric appears in no point (the message lists the available ones), or two live
            points share an epoch.
    """
    live = sorted((p for p in points if not p.superseded), key=lambda p: p.epoch)
    _check_distinct_epochs(live)
    superseded_points = [p for p in points if p.superseded]
    names = _curve_names(points, metrics)
    return PlotData(
        title=title,
        lines={name: _curve(live, name) for name in names if _has(live, name)},
        superseded={name: _branches(superseded_points, name) for name in names if _has(superseded_points, name)},
        learning_rate=([p.epoch + 1.0 for p in live], [p.learning_rate for p in live]),
        markers=_merge_markers(markers, _derived_markers(live)),
    )


def render(data: PlotData, path: str | os.PathLike[str] | BinaryIO) -> None:
    """Write :func:`figure`'s drawing of ``data`` as a PNG to a file path or a binary file object."""
    figure(data).savefig(path, format="png")


def figure(data: PlotData) -> Figure:
    """Draw ``data``: a loss panel and a panel for the other metrics (shared x), LR on a log twin axis of the top.

    The figure is built without pyplot, so it is never registered globally: nothing to close, nothing leaks,
    and the process-wide backend stays whatever the caller chose. Live curves are labelled with their metric
    name, superseded ones with ``"<name> (superseded)"`` and the LR line with ``"learning rate"``; marker lines
    carry the gid ``"marker:<kind>"``.
    """
    groups = _panel_groups(list(data.lines) + [n for n in data.superseded if n not in data.lines])
    fig = Figure(figsize=(10, 1 + 3.5 * len(groups)), layout="tight")
    axes: list[Axes] = list(fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0])
    colours = {name: f"C{i}" for i, name in enumerate(name for group in groups for name in group)}
    for ax, group in zip(axes, groups, strict=True):
        _draw_curves(ax, data, group, colours)
        _draw_markers(ax, data.markers)
        ax.set_ylabel("loss" if any("loss" in n for n in group) else "metric")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    panels = [[axes[0], *_draw_learning_rate(axes[0], data.learning_rate)], *([ax] for ax in axes[1:])]
    for panel in panels:
        _legend(panel)
    _label_markers(axes[0], data.markers)
    axes[0].set_title(data.title)
    axes[-1].set_xlabel("epoch")
    axes[-1].set_xlim(left=0)
    return fig


def _check_distinct_epochs(live: list[EpochPoint]) -> None:
    for before, after in itertools.pairwise(live):
        if before.epoch == after.epoch:
            raise ValueError(
                f"two live history points for epoch {after.epoch}; mark all but one superseded=True "
                "(a resume from an earlier epoch supersedes the epochs it trains again)"
            )


def _curve_names(points: list[EpochPoint], metrics: list[str] | None) -> list[str]:
    available = sorted({name for p in points for name in p.metrics})
    bases = metrics or [m for m in DEFAULT_METRICS if _known(m, available)]
    if not bases:
        return available
    unknown = [m for m in bases if not _known(m, available)]
    if unknown:
        listed = ", ".join(available) or "none"
        raise ValueError(f"unknown metric {', '.join(map(repr, unknown))}; available: {listed}")
    names: list[str] = []
    for base in bases:
        names += [n for n in (base, f"val_{base}") if n in available and n not in names]
    return names


def _known(metric: str, available: list[str]) -> bool:
    return metric in available or f"val_{metric}" in available


def _has(points: Iterable[EpochPoint], name: str) -> bool:
    return any(name in p.metrics for p in points)


def finite(value: float) -> float:
    """``value``, or ``nan`` (drawn as a gap) when it is not finite: a diverged run plots its finite part."""
    return value if math.isfinite(value) else math.nan


def _curve(points: list[EpochPoint], name: str) -> Curve:
    kept = [p for p in points if name in p.metrics]
    return [p.epoch + 1.0 for p in kept], [finite(p.metrics[name]) for p in kept]


def _branches(points: list[EpochPoint], name: str) -> Curve:
    """Superseded points segment by segment, each in epoch order, with ``nan`` wherever the epochs do not follow on.

    A segment that carried on where the previous one stopped continues its line; any other jump (two branches
    over the same epochs, a gap) breaks it instead of drawing a segment backwards across the plot.
    """
    x: list[float] = []
    y: list[float] = []
    previous: int | None = None
    for segment in dict.fromkeys(p.segment for p in points):
        for point in sorted((p for p in points if p.segment == segment and name in p.metrics), key=lambda p: p.epoch):
            if previous is not None and point.epoch != previous + 1:
                x.append(math.nan)
                y.append(math.nan)
            x.append(point.epoch + 1.0)
            y.append(finite(point.metrics[name]))
            previous = point.epoch
    return x, y


def _derived_markers(live: list[EpochPoint]) -> list[Marker]:
    """A marker at the boundary before each live epoch whose learning rate or phase differs from the one before."""
    derived: list[Marker] = []
    for before, after in itertools.pairwise(live):
        if not math.isclose(before.learning_rate, after.learning_rate, rel_tol=1e-9, abs_tol=0.0):
            derived.append(Marker(after.epoch, "lr", f"lr {before.learning_rate:g}→{after.learning_rate:g}"))
        if after.phase != before.phase:
            derived.append(Marker(after.epoch, "phase", f"phase {before.phase or '-'}→{after.phase or '-'}"))
    return derived


def _merge_markers(given: list[Marker], derived: list[Marker]) -> list[Marker]:
    """Given markers win over a derived one of the same kind at the same x; exact duplicates are dropped."""
    merged = list(dict.fromkeys(given))
    for marker in derived:
        if not any(m.kind == marker.kind and math.isclose(m.epoch, marker.epoch) for m in merged):
            merged.append(marker)
    return sorted(merged, key=lambda m: m.epoch)


def _panel_groups(names: list[str]) -> list[list[str]]:
    """Losses in one panel, every other metric in a second; at least one panel so the LR still has a home."""
    losses = [n for n in names if "loss" in n]
    others = [n for n in names if "loss" not in n]
    return [group for group in (losses, others) if group] or [[]]


def _draw_curves(ax: Axes, data: PlotData, names: list[str], colours: dict[str, str]) -> None:
    for name in names:
        if name in data.lines:
            x, y = data.lines[name]
            ax.plot(x, y, color=colours[name], label=name)
        if name in data.superseded:
            x, y = data.superseded[name]
            label = f"{name} (superseded)"
            ax.plot(x, y, color=colours[name], linestyle="--", marker=".", alpha=SUPERSEDED_ALPHA, label=label)
    ax.grid(alpha=0.3)


def _draw_markers(ax: Axes, markers: list[Marker]) -> None:
    for marker in markers:
        colour, style = _MARKER_STYLE[marker.kind]
        ax.axvline(marker.epoch, color=colour, linestyle=style, linewidth=1, gid=f"marker:{marker.kind}")


def _draw_learning_rate(ax: Axes, learning_rate: Curve) -> list[Axes]:
    """A step line on a twin axis (returned, if any): epoch ``e``'s rate holds over ``(e, e + 1]``, so the jump
    sits on its "lr" marker."""
    x, y = learning_rate
    if not x:
        return []
    twin = ax.twinx()
    ax.set_zorder(twin.get_zorder() + 1)  # metrics, legend and labels over the LR line, not under it
    ax.patch.set_visible(False)
    twin.plot(x, y, drawstyle="steps-pre", color="tab:olive", linewidth=1.5, label=LEARNING_RATE_LABEL)
    if all(rate > 0 for rate in y):  # log cannot show a zero rate (e.g. warm-up from 0): fall back to linear
        twin.set_yscale("log")
    twin.set_ylabel(LEARNING_RATE_LABEL)
    return [twin]


def _legend(panel: list[Axes]) -> None:
    """One legend for a panel's curves and its twin's LR line, placed where it hides the fewest curves."""
    handles = [h for ax in panel for h in ax.get_legend_handles_labels()[0]]
    if handles:
        panel[0].legend(handles=handles, loc="best", fontsize="small")


def _label_markers(ax: Axes, markers: list[Marker]) -> None:
    """One rotated label per x at the top of ``ax``: events at the same x share it rather than overprint."""
    groups: list[list[Marker]] = []
    for marker in markers:  # already sorted by x
        if groups and math.isclose(groups[-1][0].epoch, marker.epoch):
            groups[-1].append(marker)
        else:
            groups.append([marker])
    for group in groups:
        colour, _ = _MARKER_STYLE[group[0].kind]
        text = " / ".join(m.label for m in group)
        ax.text(
            group[0].epoch,
            0.98,
            text,
            transform=ax.get_xaxis_transform(),
            rotation=90,
            fontsize=7,
            color=colour,
            ha="right",
            va="top",
            bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1},
        )
