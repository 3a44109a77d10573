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
SUPERSEDED_LABEL_ALPHA = 0.5  # faded like the superseded curves, yet still legible as text
LOG_LOSS_RANGE = 20.0  # a loss panel whose positive values span more than this factor gets a log axis
LABEL_FONT_SIZE = 9.0
FIGURE_WIDTH = 10.0
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
    end_learning_rate: float | None = None  # the LR of the epoch's last step, where a change inside it differs

    @property
    def final_learning_rate(self) -> float:
        """The LR in force when the epoch ended: what a backup or snapshot taken then carries on with."""
        return self.learning_rate if self.end_learning_rate is None else self.end_learning_rate

    def __post_init__(self) -> None:
        if self.epoch < 0:
            raise ValueError(f"Invalid value for `epoch`. Received: epoch={self.epoch}. Expected 0 or more (0-based).")


@dataclass(frozen=True)
class Marker:
    """An event drawn as a vertical line at ``epoch`` = epochs completed when it happened (fractional mid-epoch).

    ``superseded``: it happened on a branch that a later ``resume --from-epoch`` abandoned; drawn faintly,
    like that branch's curves.
    """

    epoch: float
    kind: MarkerKind
    label: str
    superseded: bool = False

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
        learning_rate=_learning_rate(live, [m.epoch for m in markers if m.kind == "lr" and not m.superseded]),
        markers=_merge_markers(markers, _derived_markers(live)),
    )


def _learning_rate(live: list[EpochPoint], changes: list[float]) -> Curve:
    """The step line's points: epoch ``e``'s rate over ``(e, e + 1]``; an epoch whose rate changed inside it
    (``end_learning_rate``) steps at its "lr" marker's x when there is one, else at its end."""
    x: list[float] = []
    y: list[float] = []
    for p in live:
        inside = [c for c in changes if p.epoch < c < p.epoch + 1]
        if p.end_learning_rate is not None and inside:
            x += [inside[0], p.epoch + 1.0]
            y += [p.learning_rate, p.end_learning_rate]
        else:
            x.append(p.epoch + 1.0)
            y.append(p.learning_rate)
    return x, y


def render(data: PlotData, path: str | os.PathLike[str] | BinaryIO) -> None:
    """Write :func:`figure`'s drawing of ``data`` as a PNG to a file path or a binary file object."""
    figure(data).savefig(path, format="png")


def figure(data: PlotData) -> Figure:
    """Draw ``data``: an events strip, a loss panel and a panel for the other metrics (shared x), LR on a log twin
    axis of the loss panel.

    Event labels are horizontal text in the strip above the curves, one label per x (events at the same x share
    it, one line each), staggered over as many rows as they need not to overlap; superseded events are faint
    like their branch. The loss axis is logarithmic when the positive losses span more than ``LOG_LOSS_RANGE``
    (one early spike would otherwise flatten the rest of the run) and says so.

    The figure is built without pyplot, so it is never registered globally: nothing to close, nothing leaks,
    and the process-wide backend stays whatever the caller chose. Live curves are labelled with their metric
    name, superseded ones with ``"<name> (superseded)"`` and the LR line with ``"learning rate"``; marker lines
    carry the gid ``"marker:<kind>"`` and event labels the gid ``"event-label"``.
    """
    groups = _panel_groups(list(data.lines) + [n for n in data.superseded if n not in data.lines])
    right = _x_right(data)
    labels = _event_labels(data.markers)
    rows = _label_rows(labels, right)
    line_height = LABEL_FONT_SIZE * 1.45 / 72  # inches
    row_heights = [
        line_height * max(label.text.count("\n") + 1 for label in labels if label.row == row) for row in rows
    ]
    strip = 0.15 + sum(row_heights) + 0.1 * len(rows)
    fig = Figure(figsize=(FIGURE_WIDTH, 1 + strip + 3.5 * len(groups)), layout="tight")
    grid = fig.subplots(
        1 + len(groups), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": [strip] + [3.5] * len(groups)}
    )
    events, *axes = list(grid[:, 0])
    colours = {name: f"C{i}" for i, name in enumerate(name for group in groups for name in group)}
    for ax, group in zip(axes, groups, strict=True):
        _draw_curves(ax, data, group, colours)
        _draw_markers(ax, data.markers)
        _loss_scale(ax, data, group)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    panels = [[axes[0], *_draw_learning_rate(axes[0], data.learning_rate)], *([ax] for ax in axes[1:])]
    for panel in panels:
        _legend(panel)
    _draw_markers(events, data.markers)
    _draw_event_labels(events, labels, row_heights, strip)
    events.set_label("events")
    events.set_title(data.title)
    axes[-1].set_xlabel("epoch")
    axes[-1].set_xlim(0, right)
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
    """A marker at the boundary before each live epoch whose learning rate or phase differs from the one before.

    The rate before the boundary is the one in force at the end of the previous epoch (after a ``set-lr --now``
    inside it), which is also the one a snapshot there carries to a ``resume --from-epoch``.
    """
    derived: list[Marker] = []
    for before, after in itertools.pairwise(live):
        old = before.final_learning_rate
        if not math.isclose(old, after.learning_rate, rel_tol=1e-9, abs_tol=0.0):
            derived.append(Marker(after.epoch, "lr", f"lr {old:g}→{after.learning_rate:g}"))
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
        alpha = SUPERSEDED_ALPHA if marker.superseded else 1.0
        ax.axvline(marker.epoch, color=colour, linestyle=style, linewidth=1, alpha=alpha, gid=f"marker:{marker.kind}")


def _loss_scale(ax: Axes, data: PlotData, names: list[str]) -> None:
    """A log y axis for a loss panel whose positive finite values span more than ``LOG_LOSS_RANGE``."""
    is_loss = any("loss" in n for n in names)
    values = [
        y for name in names for curve in (data.lines.get(name), data.superseded.get(name)) if curve for y in curve[1]
    ]
    finite_values = [y for y in values if math.isfinite(y)]
    log = (
        is_loss
        and bool(finite_values)
        and min(finite_values) > 0
        and max(finite_values) / min(finite_values) > LOG_LOSS_RANGE
    )
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(("loss (log scale)" if log else "loss") if is_loss else "metric")


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


@dataclass
class _EventLabel:
    epoch: float
    text: str
    colour: str
    superseded: bool
    row: int = 0
    left: bool = False  # extends to the left of its marker (near the right edge)


def _event_labels(markers: list[Marker]) -> list[_EventLabel]:
    """One label per x (and per live or superseded: a faint one stays faint): events at the same x share it,
    one line each, instead of overprinting."""
    groups: dict[tuple[float, bool], list[Marker]] = {}
    for marker in markers:  # already sorted by x
        same = next((x for x, old in groups if old == marker.superseded and math.isclose(x, marker.epoch)), None)
        groups.setdefault((marker.epoch if same is None else same, marker.superseded), []).append(marker)
    labels: list[_EventLabel] = []
    for (epoch, superseded), group in sorted(groups.items()):
        colour, _ = _MARKER_STYLE[group[0].kind]
        labels.append(_EventLabel(epoch, "\n".join(dict.fromkeys(m.label for m in group)), colour, superseded))
    return labels


def _label_rows(labels: list[_EventLabel], right: float) -> list[int]:
    """Give each label the first row where it clears the one before it (widths estimated from the text), so
    neighbouring labels are staggered instead of overprinting; returns the rows used."""
    axes_inches = FIGURE_WIDTH - 1.9  # the figure less the y labels and the LR axis on the right
    per_inch = right / axes_inches
    ends: list[float] = []  # per row: the x where its last label ends
    gap = 0.08 * per_inch
    for label in labels:
        width = (max(map(len, label.text.split("\n"))) * LABEL_FONT_SIZE * 0.52 / 72 + 0.1) * per_inch
        label.left = label.epoch + width > right
        start, end = (label.epoch - width, label.epoch) if label.left else (label.epoch, label.epoch + width)
        row = next((i for i, row_end in enumerate(ends) if start > row_end + gap), len(ends))
        if row == len(ends):
            ends.append(end)
        ends[row] = end
        label.row = row
    return list(range(len(ends)))


def _draw_event_labels(ax: Axes, labels: list[_EventLabel], row_heights: list[float], strip: float) -> None:
    """The labels in the events strip above the curves, row 0 at the top; the strip has no y axis."""
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.tick_params(axis="x", length=0)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    tops = [1 - (0.1 + sum(row_heights[:row]) + 0.1 * row) / strip for row in range(len(row_heights))]
    for label in labels:
        alpha = SUPERSEDED_LABEL_ALPHA if label.superseded else 1.0
        ax.annotate(
            label.text,
            xy=(label.epoch, tops[label.row]),
            xytext=(-3 if label.left else 3, 0),
            textcoords="offset points",
            ha="right" if label.left else "left",
            va="top",
            fontsize=LABEL_FONT_SIZE,
            color=label.colour,
            alpha=alpha,
            gid="event-label",
            bbox={"facecolor": "white", "alpha": 0.85 * alpha, "edgecolor": "none", "pad": 1},
        )


def _x_right(data: PlotData) -> float:
    """The x axis' right end: the last epoch or event, and a little room."""
    xs = [x for curve in (*data.lines.values(), *data.superseded.values()) for x in curve[0]]
    xs += [m.epoch for m in data.markers] + data.learning_rate[0]
    last = max((x for x in xs if math.isfinite(x)), default=1.0)
    return max(1.0, last) + 0.5
