"""What a chaos run checks once the job has ended: what the product promises, whatever was done to the job.

* the job SUCCEEDED;
* each epoch trained once on the live history, each attempt going on from exactly where it restored, and the
  final model applied exactly epochs x steps-per-epoch global batches (``tests/history_checks.py``);
* the LR timeline is the commanded one: each epoch's LR is the one the latest applied ``set-lr`` set before
  it (or the spec's), and an epoch in which a ``set-lr --now`` was applied ends at the new LR;
* the final weights equal those of an uninterrupted run with the same commands applied at the same steps
  (``chaos.reference``), within the tolerance of ``tests/integration/test_preemption.py``;
* no backup is half-written: every backup and snapshot with a manifest has all its files, of the sizes and
  sha256 the manifest says (a folder without a manifest is no backup: an upload cut off);
* the accounting of ``orchestrator status --json`` matches the faults: one new attempt for each fault that
  ends an attempt and none for the others, a preemption for each notice (SIGTERM, drain), and lost steps only
  where a fault gave no notice.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaos.plan import PREEMPTIONS, RESTARTS, Fault

if TYPE_CHECKING:
    from chaos.run import Chaos

JOB = "chaos"
NO_NOTICE = frozenset({"sigkill", "raylet", "upload", "driver", "drain"})  # may lose the steps since a backup
RTOL, ATOL = 1e-5, 1e-6  # as tests/integration/test_preemption.py


def check_run(chaos: Chaos) -> None:
    from chaos.run import ChaosError
    from orchestrator.status import JobStatus
    from tests.history_checks import assert_each_epoch_trained_once

    record, store = chaos.run_record, chaos.jobs
    state = store.read_state(JOB)
    if state.status is not JobStatus.SUCCEEDED:
        raise ChaosError(f"the job ended {state.status}, not SUCCEEDED: {state.reason}")
    record.checks.append("the job SUCCEEDED")
    model = _load_model(store)
    steps = store.read_progress(JOB).steps_per_epoch
    try:
        history = assert_each_epoch_trained_once(store, JOB, record.epochs, steps, model=model)
    except AssertionError as exc:
        raise ChaosError(f"each epoch once: {exc}") from exc
    record.checks.append(f"each of {record.epochs} epochs trained once; {record.epochs * steps} global batches")
    _check_lr_timeline(store, history)
    record.checks.append("the LR timeline is the commanded one")
    _check_backups(store, JOB)
    record.checks.append(f"{len(store.backup_names(JOB))} backup(s) and the snapshots complete, sha256 verified")
    _check_accounting(chaos, steps)
    _check_against_reference(chaos, model, history)


def _load_model(store: Any) -> Any:
    """The final model, copied from the store to a local file (tf_keras reads local paths)."""
    import tf_keras as keras

    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "final.keras"
        store.fs.get(store.path(JOB, "model", "final.keras"), str(local))
        return keras.models.load_model(local)


def expected_learning_rates(
    initial: float, acks: list[Any], starts: list[tuple[int, int]]
) -> list[tuple[float, float | None]]:
    """Each epoch's (LR at its first step, LR at its last step where it differs) from the applied set-lr acks;
    ``starts``: each epoch's (epoch, step) it was trained from (a resumed epoch's record starts at its restore
    point, and says the LR there)."""
    ordered = sorted(acks, key=lambda a: (a.epoch, a.step, a.seq))
    timeline: list[tuple[float, float | None]] = []
    for epoch, step in starts:
        start = initial
        for ack in ordered:
            if (ack.epoch, ack.step) <= (epoch, step):
                start = ack.learning_rate
        end = start
        for ack in ordered:
            if (ack.epoch, ack.step) <= (epoch, 10**9):
                end = ack.learning_rate
        timeline.append((start, end if end != start else None))
    return timeline


def lr_at_epoch_ends(history: list[Any]) -> list[float]:
    """The LR in force at each epoch's end. Unlike an epoch's first LR, it does not depend on where an attempt
    restored from: an epoch resumed after a ``set-lr --now`` inside it records the new LR as its first."""
    return [r.end_learning_rate if r.end_learning_rate is not None else r.learning_rate for r in history]


def _check_lr_timeline(store: Any, history: list[Any]) -> None:
    from chaos.run import ChaosError

    commands = {c.seq: c for c in store.read_commands(JOB)}
    acks = [
        a.model_copy(update={"learning_rate": a.learning_rate or commands[a.seq].learning_rate})
        for a in store.read_acks(JOB).values()
        if commands[a.seq].kind == "set_lr" and a.void is None
    ]
    initial = store.load_job(JOB).spec.optimizer.learning_rate
    attempts = {a.attempt: a for a in store.read_attempts(JOB)}
    starts = [
        (r.epoch, attempts[r.attempt].start_step if attempts[r.attempt].start_epoch == r.epoch else 0) for r in history
    ]
    expected = expected_learning_rates(initial, acks, starts)
    got = [(r.learning_rate, r.end_learning_rate) for r in history]
    for epoch, ((start, end), (want_start, want_end)) in enumerate(zip(got, expected, strict=True)):
        if abs(start - want_start) > 1e-9 * want_start or (end is None) != (want_end is None):
            raise ChaosError(f"epoch {epoch + 1}: LR {start} -> {end}, commanded {want_start} -> {want_end}")
        if end is not None and want_end is not None and abs(end - want_end) > 1e-9 * want_end:
            raise ChaosError(f"epoch {epoch + 1}: ends at LR {end}, commanded {want_end}")


def _check_backups(store: Any, job: str) -> None:
    from chaos.run import ChaosError

    for folder in ("checkpoints", "snapshots"):
        for name in _with_manifest(store, job, folder):
            problem = store.backup_problem(job, name, folder=folder, checksums=True)
            if problem is not None:
                raise ChaosError(f"{folder}/{name} is half-written: {problem}")


def _with_manifest(store: Any, job: str, folder: str) -> list[str]:
    try:
        entries = store.fs.ls(store.path(job, folder), detail=False, refresh=True)
    except FileNotFoundError:
        return []
    names = [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]
    return [n for n in names if store.fs.exists(store.path(job, folder, n, "manifest.json"))]


def attempts_per_fault(faults: list[Fault], starts: list[float], ended: float) -> list[int]:
    """How many attempts started between each injected fault and the next one (or the job's end)."""
    injected = [f for f in faults if f.injected_at is not None]
    counts = []
    for index, fault in enumerate(injected):
        assert fault.injected_at is not None
        until = injected[index + 1].injected_at if index + 1 < len(injected) else ended
        assert until is not None
        counts.append(sum(fault.injected_at <= start < until for start in starts))
    return counts


def _check_accounting(chaos: Chaos, steps_per_epoch: int) -> None:
    from chaos.run import ChaosError

    record = chaos.run_record
    done = chaos.cli("status", JOB, "--json")
    if done.returncode != 0:
        raise ChaosError(f"`orchestrator status --json` exited {done.returncode}: {done.stderr}")
    status = json.loads(done.stdout)
    injected = [f for f in record.plan.faults if f.injected_at is not None]
    restarting = [f for f in injected if f.kind in RESTARTS and not f.ended_job]
    attempts, accounting = status["attempts"], status["accounting"]
    if len(attempts) != 1 + len(restarting):
        raise ChaosError(f"{len(attempts)} attempts for {len(restarting)} faults that end an attempt (+1)")
    from datetime import datetime

    starts = [datetime.fromisoformat(a["started_at"]).timestamp() for a in attempts[1:]]
    counts = attempts_per_fault(
        record.plan.faults, starts, datetime.fromisoformat(status["state"]["ended_at"]).timestamp()
    )
    for fault, count in zip(injected, counts, strict=True):
        want = 1 if fault in restarting else 0
        if count != want:
            raise ChaosError(f"fault {fault.describe()} was followed by {count} new attempt(s), expected {want}")
    notices = sum(f.kind in PREEMPTIONS for f in restarting)
    if accounting["restarts"] != len(restarting) or accounting["preemptions"] != notices:
        raise ChaosError(f"accounting {accounting}: expected {len(restarting)} restarts, {notices} preemptions")
    lost, bound = accounting["lost_steps"], 2 * steps_per_epoch * sum(f.kind in NO_NOTICE for f in restarting)
    if lost is None or not 0 <= lost <= bound:
        raise ChaosError(f"{lost} lost steps; the faults without notice allow 0 to {bound}")
    record.checks.append(
        f"accounting: {len(attempts)} attempts, {accounting['restarts']} restarts ({notices} preempted), "
        f"{lost} lost steps (at most {bound} allowed), goodput {accounting['goodput']}"
    )


def _check_against_reference(chaos: Chaos, model: Any, history: list[Any]) -> None:
    import numpy as np

    from chaos.cluster import REPO
    from chaos.run import ChaosError
    from orchestrator.store import JobStore

    assert chaos.cluster is not None
    url = str(chaos.work / "reference-store")
    output = chaos.work / "reference.log"
    with output.open("w") as sink:
        done = subprocess.run(
            [sys.executable, "-m", "chaos.reference", chaos.run_record.store_url, url, chaos.cluster.address],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=chaos.cluster.env,
            timeout=1800,
            check=False,
        )
    if done.returncode != 0:
        raise ChaosError(f"the uninterrupted reference run failed (exit {done.returncode}): see {output}")
    reference = JobStore(url)
    got_ends, want_ends = lr_at_epoch_ends(history), lr_at_epoch_ends(reference.read_history(JOB))
    if got_ends != want_ends:
        raise ChaosError(
            f"the LR at each epoch's end, {got_ends}, differs from the uninterrupted run's with the same commands, "
            f"{want_ends}"
        )
    want = _load_model(reference)
    for index, (got, expected) in enumerate(zip(model.get_weights(), want.get_weights(), strict=True)):
        try:
            np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
        except AssertionError as exc:
            raise ChaosError(f"weight {index} differs from the uninterrupted run's: {exc}") from exc
    chaos.run_record.checks.append(
        f"the final weights equal the uninterrupted run's with the same commands (rtol {RTOL}, atol {ATOL})"
    )
