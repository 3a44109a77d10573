"""``python -m bench``: the orchestrator side by side with the hand-rolled baseline, in one invocation.

    python -m bench [--runs 3] [--only goodput,resume,...] [--out bench/results/latest.json] [--write-readme]
    python -m bench --smoke --out /tmp/smoke.json      # one tiny run of everything: the scripts still work
    python -m bench --from-json bench/results/latest.json --write-readme   # bench/README.md's table, saved run
    python -m bench --from-json all.json scale.json --write-readme   # several: later figures replace earlier

Each round runs every selected section once per contender, alternating which contender goes first; each
figure is the median over rounds (and over preemptions, for per-preemption figures) with min and max. Both
contenders share one embedded Ray instance on this machine (``RAY_ADDRESS`` is ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import figures as fig
from bench.chaos import Calibration
from bench.contenders import Run, Schedule, run_baseline, run_orchestrator
from bench.report import markdown, print_table, write_json, write_readme
from bench.resume import measure_floor
from bench.settings import Settings, full_settings, smoke_settings

SECTIONS = ("throughput", "overhead", "control", "goodput", "resume", "scale", "lostnode")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "latest.json"
README = REPO / "bench" / "README.md"  # --write-readme replaces the table between its bench markers


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one run of each contender at tiny sizes")
    parser.add_argument("--runs", type=int, default=None, help="rounds (default 3; 1 with --smoke)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON results file")
    parser.add_argument("--write-readme", action="store_true", help="put the table in bench/README.md's bench block")
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="report saved results files, run nothing; a figure in a later file replaces the same one in an earlier",
    )
    parser.add_argument("--kill-every", type=float, default=None, help="T in s (default: calibrated)")
    parser.add_argument("--examples", type=int, default=None, help="training examples of the preempted job")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (stores, step files)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: got {', '.join(unknown)}; must be among {', '.join(SECTIONS)}")
    args.sections = sections
    if args.runs is not None and args.runs < 1:
        parser.error(f"--runs: got {args.runs}, must be at least 1")
    if args.smoke and args.write_readme:
        parser.error("--write-readme: smoke figures are not worth quoting; run the full bench")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.from_json is not None:
        figures, document = merged([json.loads(path.read_text()) for path in args.from_json])
        return _report(figures, document, args)
    settings = _settings(args)
    rounds = args.runs or (1 if args.smoke else 3)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    os.environ.pop("RAY_ADDRESS", None)  # always this machine's own embedded Ray
    emulator = None
    try:
        if "overhead" in args.sections:
            from bench.gcs import start_emulator

            emulator = start_emulator(work)  # before Ray: its workers inherit the settings
        if set(args.sections) - {"lostnode"}:  # lostnode runs on clusters of its own, from other processes
            from orchestrator.launcher import connect_ray, tensorflow_trainer_class

            tensorflow_trainer_class()
            connect_ray()
        gcs_store = emulator.store_url(f"bench-{uuid.uuid4().hex[:8]}") if emulator else None
        bench = Bench(settings, args.sections, work, gcs_store)
        for round_index in range(rounds):
            bench.round(round_index, rounds)
            if round_index + 1 < rounds:  # a run cut short keeps its finished rounds (report them: --from-json)
                done = _document(bench, args, argv, round_index + 1, time.time() - started)
                write_json(args.out, _safely(bench.figures), done)
        figures = bench.figures()
        return _report(figures, _document(bench, args, argv, rounds, time.time() - started), args)
    finally:
        if emulator is not None:
            emulator.close()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _settings(args: argparse.Namespace) -> Settings:
    settings = smoke_settings() if args.smoke else full_settings()
    if args.kill_every is not None:
        settings = dataclasses.replace(settings, kill_every_s=args.kill_every)
    if args.examples is not None:
        preempted = dataclasses.replace(settings.preempted, train_examples=args.examples)
        settings = dataclasses.replace(settings, preempted=preempted)
    return settings


def _document(
    bench: Bench, args: argparse.Namespace, argv: list[str] | None, rounds: int, seconds: float
) -> dict[str, Any]:
    """Everything about the invocation besides the figures: what ran, on what, and each run's raw record."""
    return {
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "smoke": args.smoke,
        "rounds": rounds,
        "sections": args.sections,
        "seconds": round(seconds, 1),
        "kill_every_s": bench.calibration.every_s,
        "settings": dataclasses.asdict(bench.settings),
        "machine": _machine(),
        "floors": bench.evidence.floors,
        "accounting_checks": bench.evidence.checks,
        "runs": [r.summary() for r in bench.evidence.runs],
    }


class Bench:
    """Runs the selected sections round by round and keeps every run for the figures."""

    def __init__(self, settings: Settings, sections: list[str], work: Path, gcs_store: str | None) -> None:
        self.settings, self.sections, self.work, self.gcs_store = settings, sections, work, gcs_store
        self.local_store = str(work / "store")
        self.calibration = Calibration(settings.kill_every_s, settings.preemptions_per_job, settings.preempted.epochs)
        self.evidence = fig.Evidence([], settings)

    def wants(self, *sections: str) -> bool:
        return any(s in self.sections for s in sections)

    def round(self, index: int, rounds: int) -> None:
        first = ("orchestrator", "baseline") if index % 2 == 0 else ("baseline", "orchestrator")
        if self.wants("throughput", "overhead", "control"):
            for contender in first:
                self._steady(contender, index)
        if self.wants("goodput", "resume", "control"):
            for contender in first:
                self._preempted(contender, "kill", index)
        if self.wants("resume"):
            self._floor(index)
        if self.wants("goodput"):
            for contender in first:
                self._preempted(contender, "notice", index)
        if self.wants("scale"):
            for job_index, job in enumerate(self.settings.scale):
                for contender in first:
                    schedule = Schedule("kill", Calibration(None, job.epochs / 1.3, job.epochs), max_count=1)
                    kind = f"scale-{job_index}"
                    if contender == "orchestrator":
                        self._keep(
                            run_orchestrator(
                                self.work,
                                kind,
                                index,
                                job,
                                store_url=self.local_store,
                                backup={"every_epochs": 1, "keep": 2},
                                schedule=schedule,
                            )
                        )
                    else:
                        self._keep(run_baseline(self.work, kind, index, job, variants=["epoch"], schedule=schedule))
        if self.wants("lostnode"):
            from bench.lostnode import run_lost_node

            for contender in first:
                self._keep(
                    run_lost_node(
                        self.work,
                        contender,
                        index,
                        self.settings.preempted,
                        lose_after_s=self.settings.lose_after_s,
                        replace_after_s=self.settings.replace_after_s,
                    )
                )
        print(f"round {index + 1}/{rounds} done", flush=True)

    def _steady(self, contender: str, index: int) -> None:
        """Uninterrupted runs: without backups and with each kind of backup (the order rotates between rounds)."""
        job, interval = self.settings.steady, self.settings.steps_interval
        if contender == "baseline":
            variants = ["none", "epoch", f"steps:{interval}"] if self.wants("overhead") else ["none"]
            if self.wants("throughput", "overhead"):
                shift = index % len(variants)
                self._keep(run_baseline(self.work, "steady", index, job, variants=variants[shift:] + variants[:shift]))
            return
        kinds = ["none", "epoch", "auto", "steps", "gcs"] if self.wants("overhead") else []
        if self.wants("throughput"):
            kinds += [kind for kind in ("none", "quiet") if kind not in kinds]  # quiet: no TensorBoard or plot
        if self.wants("control") and "epoch" not in kinds:
            kinds.append("epoch")
        shift = index % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            # epoch backups only: the time-based default (``auto``) is measured on its own, as kind "auto"
            backup: dict[str, Any] = {"every_epochs": 1, "every_seconds": None, "keep": 3}
            if kind in ("none", "quiet"):  # the job's final backup only, after its last step
                backup = {"every_epochs": 10_000, "every_seconds": None, "keep": 1}
            if kind == "steps":
                backup = {"every_epochs": 1, "every_steps": interval, "keep": 3}
            if kind == "auto":  # the product's default: epoch backups and the adaptive interval inside epochs
                backup = {"every_epochs": 1, "keep": 3}
            store = self.gcs_store if kind == "gcs" and self.gcs_store else self.local_store
            control = kind == "epoch" and self.wants("control")
            self._keep(
                run_orchestrator(
                    self.work,
                    kind,
                    index,
                    job,
                    store_url=store,
                    backup=backup,
                    control=control,
                    monitoring=kind != "quiet",
                )
            )

    def _preempted(self, contender: str, kind: str, index: int) -> None:
        job = self.settings.preempted
        schedule = Schedule(
            kind,
            self.calibration,
            self.settings.max_preemptions,
            deadline_s=self.settings.deadline_s,
            spare_steps=job.steps_per_epoch // 2,
        )
        if contender == "baseline":
            self._keep(run_baseline(self.work, kind, index, job, variants=["epoch"], schedule=schedule))
            return
        # the product's default backups (every epoch, and by time inside epochs: backup_interval)
        backup: dict[str, Any] = {"every_epochs": 1, "keep": 3}
        run = self._keep(
            run_orchestrator(self.work, kind, index, job, store_url=self.local_store, backup=backup, schedule=schedule)
        )
        if run.error is None:
            try:
                self.evidence.checks.append(fig.accounting_check(run))
            except Exception as exc:  # a cross-check only: its failure must not end the bench
                self.evidence.checks.append({"run": run.name, "error": f"{type(exc).__name__}: {exc}"})

    def _floor(self, index: int) -> None:
        source = next((r for r in self.evidence.of("orchestrator", "kill") if r.round == index), None)
        if source is None or source.name is None or source.store_url is None:
            return
        try:
            self.evidence.floors.append(
                measure_floor(self.work, self.settings.preempted, store_url=source.store_url, name=source.name)
            )
        except Exception as exc:  # the figure then has no floor, and says so
            print(f"floor: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _keep(self, run: Run) -> Run:
        self.evidence.runs.append(run)
        outcome = run.error or f"{len(run.preemptions)} preemption(s)"
        print(f"  {run.contender} {run.kind} (round {run.round + 1}): {run.seconds:.1f} s, {outcome}", flush=True)
        return run

    def figures(self) -> list[fig.Figure]:
        self.evidence.settings = dataclasses.replace(self.settings, kill_every_s=self.calibration.every_s)
        evidence, made = self.evidence, []
        if self.wants("throughput"):
            made += _safely(lambda: [fig.throughput(evidence, "none"), fig.throughput(evidence, "quiet")])
        if self.wants("overhead"):
            interval = self.settings.steps_interval
            made += _safely(
                lambda: [
                    fig.overhead(
                        evidence, "epoch", "checkpoint overhead, every epoch (local)", "orchestrator <= 1%", 1.0
                    ),
                    fig.overhead(
                        evidence,
                        "auto",
                        "checkpoint overhead, the default (epochs + auto interval)",
                        "orchestrator <= 1%",
                        1.0,
                    ),
                    fig.overhead(
                        evidence,
                        "gcs",
                        "checkpoint overhead, every epoch (orchestrator on gs://)",
                        "orchestrator <= 1%; upload not blocking steps",
                        1.0,
                    ),
                    fig.overhead(
                        evidence,
                        "steps",
                        f"checkpoint overhead, every {interval} steps",
                        "baseline about 10% (an earlier measurement)",
                        None,
                    ),
                    fig.step_gap(evidence),
                ]
            )
        resume: list[fig.Figure] = []
        if self.wants("goodput"):
            made += _safely(
                lambda: [
                    fig.goodput(evidence, "kill", fig.goodput_minimum("kill", self.calibration.every_s)),
                    fig.lost_steps(evidence, "kill"),
                    fig.goodput(evidence, "notice", fig.goodput_minimum("notice", self.calibration.every_s)),
                    fig.lost_steps(evidence, "notice"),
                ]
            )
        if self.wants("resume", "control"):
            resume = _safely(lambda: fig.resume(evidence))
            made += resume if self.wants("resume") else []
        if self.wants("control"):
            made += _safely(lambda: fig.control(evidence, resume[0] if resume else None))
        if self.wants("scale"):
            made += _safely(lambda: fig.scale(evidence))
        if self.wants("lostnode"):
            made += _safely(lambda: fig.lost_node(evidence))
        return made


def _safely(compute: Any) -> list[fig.Figure]:
    """A section whose figures cannot be computed (its runs failed) is reported, not fatal to the others."""
    try:
        result: list[fig.Figure] = compute()
        return result
    except Exception as exc:
        print(f"figures: {type(exc).__name__}: {exc}", file=sys.stderr)
        return []


def merged(documents: list[dict[str, Any]]) -> tuple[list[fig.Figure], dict[str, Any]]:
    """The figures of several saved invocations (a figure of a later one replaces the same figure of an earlier
    one, in its place) and a document naming every invocation they came from."""
    figures: dict[str, fig.Figure] = {}
    for document in documents:
        for key, value in document["figures"].items():
            figures[key] = _figure_from_json(key, value)
    if len(documents) == 1:
        return list(figures.values()), documents[0]
    rounds = sorted({d.get("rounds") for d in documents}, key=str)
    combined = {
        "rounds": rounds[0] if len(rounds) == 1 else "/".join(str(r) for r in rounds),
        "smoke": any(d.get("smoke") for d in documents),
        "sources": [{"command": d.get("command"), "seconds": d.get("seconds")} for d in documents],
    }
    return list(figures.values()), combined


def _report(figures: list[fig.Figure], document: dict[str, Any], args: argparse.Namespace) -> int:
    title = (
        f"orchestrator vs hand-rolled baseline: {document.get('rounds')} round(s), "
        f"{'smoke' if document.get('smoke') else 'full'}, median [min-max]"
    )
    print_table(figures, title)
    if args.from_json is None:
        write_json(args.out, figures, document)
        print(f"results: {args.out}")
    if args.write_readme:
        sources = document.get("sources") or [document]
        runs = " and ".join(f"`{s.get('command', 'python -m bench')}`, {s.get('seconds', '?')} s" for s in sources)
        write_readme(README, markdown(figures, f"{title}; {runs}"))
        print(f"{README}: bench block replaced ({len(figures)} figures)")
    return 0


def _figure_from_json(key: str, value: dict[str, Any]) -> fig.Figure:
    def values(side: str) -> list[float]:
        spread = value.get(side)
        return list(spread["values"]) if spread else []

    return fig.Figure(
        key,
        value["label"],
        value["unit"],
        values("orchestrator"),
        values("baseline"),
        target=value.get("target", ""),
        met=value.get("met"),
        note=value.get("note", ""),
    )


def _machine() -> dict[str, Any]:
    import importlib.metadata as metadata

    versions = {name: metadata.version(name) for name in ("tensorflow", "tf-keras", "ray", "gcsfs")}
    return {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
    }
