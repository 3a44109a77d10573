"""The figures: each one a side-by-side of the two contenders from the runs of one invocation, with its target.

Every figure keeps each run's value (median, min and max are taken over them); absolute seconds are reported,
the targets are ratios or comparisons. A figure whose runs failed has no values and says so in its note.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from bench.contenders import Run
from bench.resume import PHASES, actor_starts, breakdown
from bench.settings import Settings
from bench.timeline import Timeline


@dataclass
class Figure:
    """One line of the table."""

    key: str
    label: str
    unit: str
    orchestrator: list[float]
    baseline: list[float]
    target: str = ""
    met: bool | None = None
    note: str = ""

    def median(self, contender: str) -> float | None:
        values = self.orchestrator if contender == "orchestrator" else self.baseline
        return statistics.median(values) if values else None

    def ratio(self) -> float | None:
        ours, theirs = self.median("orchestrator"), self.median("baseline")
        return round(ours / theirs, 3) if ours is not None and theirs is not None and theirs > 0 else None

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "orchestrator": spread(self.orchestrator),
            "baseline": spread(self.baseline),
            "ratio": self.ratio(),
            "target": self.target,
            "met": self.met,
            "note": self.note,
        }


def spread(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "values": [round(v, 4) for v in values],
    }


@dataclass
class Evidence:
    """Per-run measurements, computed once from the runs, from which the figures are drawn."""

    runs: list[Run]
    settings: Settings
    floors: list[dict[str, float]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)  # run_accounting vs the timestamps, per run

    def of(self, contender: str, kind: str) -> list[Run]:
        return [r for r in self.runs if r.contender == contender and r.kind == kind and r.error is None]

    def by_round(self, contender: str, kind: str) -> dict[int, Run]:
        return {r.round: r for r in self.of(contender, kind)}


def variant_timeline(run: Run, variant: str) -> Timeline:
    """The timeline of one variant of a baseline run (its steps are in ``<run>/<variant>/steps``)."""
    folder = run.steps_dir.parent.parent / variant.replace(":", "-") / "steps"
    return Timeline.read(folder, steps_per_epoch=run.job.steps_per_epoch, global_batch=run.job.batch_size)


def steady_timelines(evidence: Evidence, contender: str, variant: str) -> dict[int, Timeline]:
    """By round: the orchestrator's run of kind ``variant``, or the baseline steady run's ``variant``."""
    if contender == "orchestrator":
        return {i: r.timeline() for i, r in evidence.by_round("orchestrator", variant).items()}
    baseline_variant = {
        "none": "none",
        "epoch": "epoch",
        "auto": "epoch",
        "steps": f"steps:{evidence.settings.steps_interval}",
    }
    return {
        i: variant_timeline(r, baseline_variant[variant]) for i, r in evidence.by_round("baseline", "steady").items()
    }


LOST_WORK_S = 2.0  # the target for lost work per kill: seconds of training


def throughput(evidence: Evidence, kind: str) -> Figure:
    """Samples/s without backups against plain ``model.fit``: as a user gets it (``none``: TensorBoard files and
    the run's plot on), and without them (``quiet``), so that their share shows."""
    ours = [t.samples_per_second() for t in steady_timelines(evidence, "orchestrator", kind).values()]
    plain = [t.samples_per_second() for t in steady_timelines(evidence, "baseline", "none").values()]
    label = "throughput, no backups" + (", no TensorBoard or plot" if kind == "quiet" else "")
    key = "throughput" if kind == "none" else f"throughput_{kind}"
    figure = Figure(
        key, f"{label} (vs plain model.fit)", "samples/s", ours, plain, target="orchestrator >= 98% of plain fit"
    )
    ratio = figure.ratio()
    figure.met = ratio >= 0.98 if ratio is not None else None
    return figure


def step_gap(evidence: Evidence) -> Figure:
    """Per-step Python work between steps; the baseline's with BackupAndRestore (an earlier measurement: about 1 ms;
    docs/architecture.md, "Per-step hooks")."""
    ours = [t.step_gap_ms() for t in steady_timelines(evidence, "orchestrator", "epoch").values()]
    theirs = [t.step_gap_ms() for t in steady_timelines(evidence, "baseline", "epoch").values()]
    plain = [t.step_gap_ms() for t in steady_timelines(evidence, "baseline", "none").values()]
    hook = statistics.median(theirs) - statistics.median(plain) if theirs and plain else math.nan
    return Figure(
        "step_gap",
        "time between steps, epoch backups",
        "ms",
        ours,
        theirs,
        target="baseline hook about 1 ms/step (an earlier measurement)",
        note=f"plain model.fit: {statistics.median(plain) if plain else math.nan:.3f} ms; "
        f"BackupAndRestore's hook: {hook:+.3f} ms/step",
    )


def overhead(evidence: Evidence, variant: str, label: str, target: str, limit: float | None) -> Figure:
    """Training time with backups over training time without, in the same round, minus one, in %."""
    values: dict[str, list[float]] = {}
    for contender in ("orchestrator", "baseline"):
        none = steady_timelines(evidence, contender, "none")
        if contender == "orchestrator" and variant == "gcs":
            timed = steady_timelines(evidence, contender, "gcs")
        else:
            timed = steady_timelines(evidence, contender, "epoch" if variant == "gcs" else variant)
        values[contender] = [
            100 * (timed[i].training_seconds() / none[i].training_seconds() - 1)
            for i in sorted(timed.keys() & none.keys())
        ]
    figure = Figure(
        f"overhead_{variant}", label, "% of training time", values["orchestrator"], values["baseline"], target=target
    )
    if variant == "gcs":
        figure.note = (
            "baseline: its local folder (BackupAndRestore writes through TensorFlow's own gs:// client, which "
            "cannot reach an emulator)"
        )
    elif variant == "epoch":
        figure.note = "baseline in an earlier measurement: about 2%"
    ours = figure.median("orchestrator")
    if limit is not None and ours is not None:
        figure.met = ours <= limit
    return figure


def goodput_minimum(kind: str, kill_every_s: float | None) -> float:
    """The goodput target for a schedule (%): one preemption per 2 minutes of training or more apart gets the
    long-T targets (95% without notice, 98% with), a shorter T (about 30-60 s) the short-T ones (85%, 90%)."""
    long_t = kill_every_s is not None and kill_every_s >= 100.0
    if kind == "kill":
        return 95.0 if long_t else 85.0
    return 98.0 if long_t else 90.0


def goodput(evidence: Evidence, kind: str, minimum: float) -> Figure:
    values = {c: [100 * r.timeline().goodput() for r in evidence.of(c, kind)] for c in ("orchestrator", "baseline")}
    count = {c: [len(r.preemptions) for r in evidence.of(c, kind)] for c in values}
    how = "one worker SIGKILLed" if kind == "kill" else "SIGTERM, SIGKILL after the notice period"
    figure = Figure(
        f"goodput_{kind}",
        f"goodput, {how} every T s of training",
        "%",
        values["orchestrator"],
        values["baseline"],
        target=f">= {minimum:.0f}% and above the baseline",
        note=f"T = {evidence.settings.kill_every_s} s; preemptions per run: orchestrator {count['orchestrator']}, "
        f"baseline {count['baseline']}",
    )
    ours, theirs = figure.median("orchestrator"), figure.median("baseline")
    if ours is not None and theirs is not None:
        figure.met = ours >= minimum and ours > theirs
    return figure


def lost_steps(evidence: Evidence, kind: str) -> Figure:
    values: dict[str, list[float]] = {}
    for contender in ("orchestrator", "baseline"):
        lost = []
        for run in evidence.of(contender, kind):
            timeline = run.timeline()
            lost += [float(n) for p in run.preemptions if (n := timeline.lost_steps(p.at)) is not None]
        values[contender] = lost
    spe = evidence.settings.preempted.steps_per_epoch
    step_s = [t.epoch_seconds() / spe for r in evidence.of("orchestrator", kind) if (t := r.timeline())]
    per_step = statistics.median(step_s) if step_s else math.nan
    limit = LOST_WORK_S / per_step if per_step == per_step else math.nan  # steps in 2 s of training
    target = "0" if kind == "notice" else f"<= {LOST_WORK_S:g} s of training ({limit:.0f} steps), median"
    figure = Figure(
        f"lost_steps_{kind}",
        f"lost steps per preemption ({'with notice' if kind == 'notice' else 'kill'})",
        "steps",
        values["orchestrator"],
        values["baseline"],
        target=target,
        note=f"one epoch = {spe} steps (the baseline's backup interval); a step {per_step * 1000:.1f} ms",
    )
    if values["orchestrator"]:
        figure.met = (
            max(values["orchestrator"]) == 0 if kind == "notice" else statistics.median(values["orchestrator"]) <= limit
        )
    return figure


def warm_hits(evidence: Evidence) -> Figure:
    """Restarted workers that landed in the warm pool's processes (``recovery.warm_starts``), per kill run."""
    from orchestrator.recovery import warm_starts
    from orchestrator.store import JobStore

    rates = []
    for run in evidence.of("orchestrator", "kill"):
        if run.store_url is None or run.name is None:
            continue
        store = JobStore(run.store_url)
        starts = warm_starts(store.read_failures(run.name), store.read_attempts(run.name))
        if starts:
            rates.append(100 * sum(s.warm for s in starts) / sum(s.workers for s in starts))
    figure = Figure(
        "warm_hits",
        "restarted workers that landed warm",
        "%",
        rates,
        [],
        target=">= 95%",
        note="baseline: no pool (every restart starts cold processes)",
    )
    ours = figure.median("orchestrator")
    figure.met = ours >= 95 if ours is not None else None
    return figure


def resume(evidence: Evidence) -> list[Figure]:
    """Total time to resume against the floor, then one line per phase."""
    actors = actor_starts()
    phases: dict[str, list[dict[str, float]]] = {}
    for contender in ("orchestrator", "baseline"):
        phases[contender] = [
            b
            for r in evidence.of(contender, "kill")
            for p in r.preemptions
            if (b := breakdown(r, p, actors)) is not None
        ]
    floor = statistics.median(f["total"] for f in evidence.floors) if evidence.floors else None
    total = Figure(
        "resume",
        "time to resume (kill -> next step)",
        "s",
        [b["total"] for b in phases["orchestrator"]],
        [b["total"] for b in phases["baseline"]],
        target="<= 3 s and <= 0.35 x baseline",
        note=f"cold floor {floor:.1f} s" if floor else "cold floor not measured",
    )
    ours, theirs = total.median("orchestrator"), total.median("baseline")
    if ours is not None and theirs:
        total.met = ours <= 3.0 and ours <= 0.35 * theirs
        total.note += f"; orchestrator / baseline = {ours / theirs:.2f}"
    figures = [total, warm_hits(evidence)]
    for phase in PHASES:
        floor_phase = statistics.median(f[phase] for f in evidence.floors) if evidence.floors else math.nan
        figures.append(
            Figure(
                f"resume_{phase.replace(' + ', '_').replace(' ', '_')}",
                f"  resume: {phase}",
                "s",
                [b[phase] for b in phases["orchestrator"]],
                [b[phase] for b in phases["baseline"]],
                target=f"floor {floor_phase:.2f} s",
            )
        )
    return figures


def control(evidence: Evidence, resume_figure: Figure | None) -> list[Figure]:
    """set-lr --now and set-lr (next epoch): from the command being recorded to its effect on training."""
    spe_s = [t.epoch_seconds() for t in steady_timelines(evidence, "orchestrator", "epoch").values()]
    restart = resume_figure.baseline if resume_figure is not None else []
    figures = []
    for label, limit in (("now", 2.0), ("epoch", None)):
        latencies = []
        for run in evidence.of("orchestrator", "epoch"):
            issued, applied = run.commands.get(label, (None, None))
            if issued is not None and applied is not None:
                latencies.append((applied - issued).total_seconds())
        epoch_s = statistics.median(spe_s) if spe_s else math.nan
        figure = Figure(
            f"control_{label}",
            f"control: set-lr{' --now' if label == 'now' else ''}, issue -> effect",
            "s",
            latencies,
            restart,
            target="<= 2 s" if limit else f"the next epoch boundary (an epoch: {epoch_s:.1f} s)",
            note="baseline: no live control; stop and restart from its last backup = its time to resume",
        )
        ours = figure.median("orchestrator")
        if ours is not None:
            figure.met = ours <= (limit if limit is not None else epoch_s + 1.0)
        figures.append(figure)
    return figures


def scale(evidence: Evidence) -> list[Figure]:
    """Per scale job: checkpoint time, and time to resume after one kill."""
    actors = actor_starts()
    figures = []
    for index, job in enumerate(evidence.settings.scale):
        kind = f"scale-{index}"
        saves: dict[str, list[float]] = {}
        resumes: dict[str, list[float]] = {}
        for contender in ("orchestrator", "baseline"):
            runs = evidence.of(contender, kind)
            saves[contender] = [s for r in runs for s in checkpoint_seconds(r)]
            resumes[contender] = [
                b["total"] for r in runs for p in r.preemptions if (b := breakdown(r, p, actors)) is not None
            ]
        uploads = [u for r in evidence.of("orchestrator", kind) for u in upload_seconds(r)]
        upload = f"{statistics.median(uploads):.2f} s" if uploads else "not recorded"
        figures.append(
            Figure(
                f"scale_{index}_checkpoint",
                f"scale {job.label()}: checkpoint, training blocked",
                "s",
                saves["orchestrator"],
                saves["baseline"],
                note=f"orchestrator: the checkpoint write (its upload, in the background: median {upload}); "
                "baseline: its epoch-end save, all of it synchronous",
            )
        )
        figures.append(
            Figure(
                f"scale_{index}_resume",
                f"scale {job.label()}: time to resume",
                "s",
                resumes["orchestrator"],
                resumes["baseline"],
            )
        )
    return figures


def checkpoint_seconds(run: Run) -> list[float]:
    """What each backup cost training: the orchestrator's ``blocking_seconds`` (``backups.jsonl``: the checkpoint
    write, and any wait for the previous upload), the baseline's epoch-end save (synchronous, all of it)."""
    if run.contender == "orchestrator":
        return [record.blocking_seconds for record in _backup_records(run)]
    seconds = []
    for process in run.timeline().attempts:
        begins, ends = process.events.get("save_begin", []), process.events.get("save_end", [])
        seconds += [end - begin for begin, end in zip(begins, ends, strict=False)]
    return seconds


def upload_seconds(run: Run) -> list[float]:
    """The orchestrator's upload of each backup (in the background unless a stop or a notice waits for it)."""
    return [record.upload_seconds for record in _backup_records(run)]


def _backup_records(run: Run) -> list[Any]:
    from orchestrator.store import JobStore

    assert run.store_url is not None and run.name is not None
    return list(JobStore(run.store_url).read_backup_records(run.name))


def accounting_check(run: Run) -> dict[str, Any]:
    """The orchestrator's own run accounting (``orchestrator status``) next to the timestamp method."""
    from orchestrator.recovery import run_accounting
    from orchestrator.store import JobStore

    assert run.store_url is not None and run.name is not None
    store = JobStore(run.store_url)
    accounting = run_accounting(
        store.read_attempts(run.name),
        store.read_failures(run.name),
        store.read_history(run.name),
        store.read_history_lines(run.name),
        store.read_state(run.name).ended_at,
        store.read_backup_records(run.name),
    )
    timeline = run.timeline()
    lost = [timeline.lost_steps(p.at) for p in run.preemptions]
    return {
        "run": run.name,
        "kind": run.kind,
        "round": run.round,
        "goodput_timestamps": round(timeline.goodput(), 4),
        "goodput_accounting": accounting.goodput,
        "lost_steps_timestamps": sum(n for n in lost if n is not None),
        "lost_steps_accounting": accounting.lost_steps,
        "restarts": accounting.restarts,
        "wall_accounting_s": accounting.wall_seconds,
        "training_accounting_s": accounting.training_seconds,
    }


def lost_node(evidence: Evidence) -> list[Figure]:
    """A lost worker node replaced ``replace_after_s`` later (``bench.lostnode``): how soon training goes on, how
    soon it is back at full size once the replacement joins, and useful progress over the whole run."""
    from bench.lostnode import outcome

    settings = evidence.settings
    outcomes = {c: [outcome(r) for r in evidence.of(c, "lostnode")] for c in ("orchestrator", "baseline")}

    def values(contender: str, attribute: str) -> list[float]:
        found = (getattr(o, attribute) for o in outcomes[contender])
        return [float(v) for v in found if v is not None and math.isfinite(v)]

    gap = f"replacement after {settings.replace_after_s:g} s"
    again = Figure(
        "lostnode_training_again",
        "lost node: loss -> training again",
        "s",
        values("orchestrator", "training_again_s"),
        values("baseline", "training_again_s"),
        target="<= 5 s",
        note=f"{gap}; the baseline waits for it",
    )
    full = Figure(
        "lostnode_full_size",
        "lost node: node joins -> full size",
        "s",
        values("orchestrator", "full_size_s"),
        values("baseline", "full_size_s"),
        target="<= 10 s",
    )
    steady = values("orchestrator", "steady_samples_per_s") + values("baseline", "steady_samples_per_s")
    useful = Figure(
        "lostnode_useful",
        "lost node: useful progress over the run",
        "samples/s",
        values("orchestrator", "useful_samples_per_s"),
        values("baseline", "useful_samples_per_s"),
        target=">= 1.3 x baseline",
        note=f"{gap}; uninterrupted (both, before the loss): {statistics.median(steady) if steady else math.nan:.0f} "
        "samples/s",
    )
    ours = again.median("orchestrator")
    again.met = ours <= 5.0 if ours is not None else None
    ours = full.median("orchestrator")
    full.met = ours <= 10.0 if ours is not None else None
    ratio = useful.ratio()
    useful.met = ratio >= 1.3 if ratio is not None else None
    return [again, full, useful]
