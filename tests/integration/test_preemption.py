"""The product's promise: a job whose worker is killed comes back by itself and ends with the same model.

A worker process is SIGKILLed (no notice) at a random moment after the second backup (its seed is printed:
KILL_SEED replays it); Ray Train restarts
the worker group, which restores the newest verified backup and continues. The run must end with the same
epochs, the same learning rate and the same weights (within float tolerance) as an uninterrupted run of the
same spec and seed, having applied every global batch exactly once (the optimizer's step count proves it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.recovery import run_accounting
from orchestrator.runner import run_job
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw, seeded_delay, write_spec
from tests.history_checks import assert_each_epoch_trained_once, final_model
from tests.notify_server import Inbox

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

EPOCHS = 5


BACKUPS = {
    "epochs": {"every_epochs": 1, "every_seconds": None, "keep": 2},  # epoch ends only
    "steps": {"every_epochs": 100, "every_steps": 10, "keep": 2},  # inside epochs only (32 steps each)
    "seconds": {"every_epochs": 100, "every_seconds": 1, "keep": 2},  # by time, at control points
}


def spec_for(
    tmp_path: Path,
    name: str,
    backups: str = "epochs",
    sigterm_grace_s: float | None = None,
    examples: int = 2048,
    notify: dict[str, Any] | None = None,
) -> Path:
    raw = quickstart_raw()
    raw.update(name=name, epochs=EPOCHS, deterministic=True)
    raw["data"].update(train_examples=examples, validation_examples=512)
    raw["backup"] = BACKUPS[backups]
    raw["failures"] = {"max_failures": 2, **({"sigterm_grace_s": sigterm_grace_s} if sigterm_grace_s else {})}
    raw["monitoring"] = {"tensorboard_every_steps": 8}
    if notify:
        raw["notify"] = notify
    # a plateau rule that surely fires (accuracy cannot keep gaining 0.2): its state must survive the restore
    raw["lr_schedule"] = {
        "reduce_on_plateau": {"monitor": "val_accuracy", "patience": 1, "factor": 0.5, "min_delta": 0.2}
    }
    return write_spec(tmp_path, raw, f"{name}.yaml")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None) -> JobStore:
    """One uninterrupted run of the spec, for the interrupted runs to be compared with."""
    folder = tmp_path_factory.mktemp("reference")
    store = JobStore(str(folder / "store"))
    run_job(spec_for(folder, "uninterrupted"), store=store)
    return store


def start_job(
    tmp_path: Path, name: str, store: JobStore, examples: int = 2048
) -> tuple[threading.Thread, dict[str, Any]]:
    """Run the spec as job ``name`` in a thread; the outcome lands in the dict as ``result``."""
    outcome: dict[str, Any] = {}
    spec = spec_for(tmp_path, name, examples=examples)
    thread = threading.Thread(target=lambda: outcome.update(result=run_job(spec, store=store)), daemon=True)
    thread.start()
    return thread, outcome


def worker_pid(store: JobStore, job: str, rank: int, world: int = 2) -> int:
    log = store.read_logs(job).get(f"worker-{rank}.log", "")
    match = re.search(rf"rank {rank}/{world} on \S+ \(pid (\d+)", log)
    assert match, f"rank {rank} has not logged its pid"
    return int(match.group(1))


def tf_value(event: Any) -> float:
    import tensorflow as tf

    return float(tf.make_ndarray(event.tensor_proto))


def _tensors(file: Path, tag: str) -> list[Any]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(file), size_guidance={"tensors": 0})  # 0: keep every event
    events.Reload()
    return list(events.Tensors(tag))


@pytest.mark.parametrize("backups", ["epochs", "steps", "seconds"])
def test_killed_worker_resumes_and_ends_with_the_same_weights(
    tmp_path: Path, reference: JobStore, backups: str, notify_inbox: Inbox
) -> None:
    store = JobStore(str(tmp_path / "store"))
    outcome: dict[str, Any] = {}
    # one case also says it by notification (a real apprise to a real endpoint): the restart, then the end
    notify = {"urls": [notify_inbox.url], "on": ["restarted", "succeeded"]} if backups == "epochs" else None
    spec = spec_for(tmp_path, "killed", backups, notify=notify)
    thread = threading.Thread(target=lambda: outcome.update(result=run_job(spec, store=store)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while len(store.backup_names("killed") if "killed" in store.job_names() else []) < 2:
        assert thread.is_alive() and time.monotonic() < deadline, "the job never took two backups"
        time.sleep(0.2)
    time.sleep(seeded_delay(0.0, 1.0, "SIGKILL"))  # somewhere in the next epoch
    at_kill = store.read_progress("killed")  # the test's own view of where training was
    os.kill(worker_pid(store, "killed", 1), signal.SIGKILL)
    seen = []
    while thread.is_alive() and time.monotonic() < deadline + 100:
        status = store.read_state("killed").status
        if not seen or seen[-1] is not status:
            seen.append(status)
        time.sleep(0.1)
    thread.join(timeout=10)
    finished = datetime.now(UTC)
    assert not thread.is_alive(), "the job did not finish after the kill"
    assert JobStatus.RECOVERING in seen and seen[-1] in (JobStatus.RUNNING, JobStatus.SUCCEEDED)
    assert seen[seen.index(JobStatus.RECOVERING) + 1] is JobStatus.RUNNING  # recovered, then trained on

    assert outcome["result"].status is JobStatus.SUCCEEDED
    attempts = store.read_attempts("killed")
    assert len(attempts) == 2 and attempts[1].restored_from is not None
    if notify:
        titles = [m["title"] for m in notify_inbox.wait_for(2)]
        assert titles == ["orchestrator: job 'killed' restarted", "orchestrator: job 'killed' succeeded"]
        assert "notification 'succeeded' sent" in store.read_logs("killed")["driver.log"]
    assert set(attempts[1].startup) - {"process"} == {"strategy", "data", "model", "choice", "compile", "restore"}
    assert attempts[1].startup["restore"] > 0 and attempts[1].startup["model"] > 0
    if backups == "epochs":
        assert attempts[1].start_epoch >= 2 and attempts[1].start_step == 0
    elif backups == "steps":  # resumed inside an epoch, on the step of the backup
        assert attempts[1].start_step > 0
        assert (attempts[1].start_epoch * 32 + attempts[1].start_step) % 10 == 0  # a backup every 10 job steps
        assert attempts[1].restored_from == f"e{attempts[1].start_epoch:05d}-s{attempts[1].start_step:07d}"
    else:  # by time: backups at control points inside epochs, each of them logged with the interval
        assert attempts[1].restored_from == f"e{attempts[1].start_epoch:05d}-s{attempts[1].start_step:07d}"
        inside = [r for r in store.read_backup_records("killed") if r.step > 0]
        assert len(inside) >= 2, "no time-based backups inside epochs"
        assert (
            "time-based backups inside epochs every 1 s (backup.every_seconds)"
            in store.read_logs("killed")["worker-0.log"]
        )
    assert "worker group failed" in store.read_logs("killed")["controller.log"]
    [failure] = store.read_failures("killed")
    resumed_after = (attempts[1].started_at - failure.failed_at).total_seconds()
    assert 0 < resumed_after < 120
    assert f"attempt 2 resumed from backup {attempts[1].restored_from}" in store.read_logs("killed")["driver.log"]
    assert store.read_state("killed").attempt == 2

    resumed, uninterrupted = final_model(store, "killed"), final_model(reference, "uninterrupted")
    steps = 2048 // 64
    history = assert_each_epoch_trained_once(store, "killed", EPOCHS, steps, model=resumed)  # whatever was redone
    uninterrupted_history = reference.read_history("uninterrupted")
    assert [r.learning_rate for r in history] == [r.learning_rate for r in uninterrupted_history]
    assert len({r.learning_rate for r in uninterrupted_history}) > 1, "the plateau rule never fired"
    assert {r.attempt for r in history if r.epoch >= attempts[1].start_epoch} == {2}

    assert int(uninterrupted.optimizer.iterations.numpy()) == EPOCHS * steps
    for got, want in zip(resumed.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(history, uninterrupted_history, strict=True):
        assert got.metrics["val_loss"] == pytest.approx(want.metrics["val_loss"], rel=1e-4)

    # Run accounting against the test's own figures. Lost steps: the failure records the last progress report
    # (written about once a second), so it is never behind what the test read before the kill, and never more
    # than the backup interval (a backup every 10 steps, or every epoch of 32 steps).
    accounting = run_accounting(
        attempts,
        store.read_failures("killed"),
        history,
        store.read_history_lines("killed"),
        store.read_state("killed").ended_at,
    )
    assert at_kill is not None and accounting.restarts == 1
    steps = at_kill.steps_per_epoch
    own_lost = at_kill.epoch * steps + at_kill.step - (attempts[1].start_epoch * steps + attempts[1].start_step)
    # by time: a backup every second at the control points, about a second apart: at most two epochs' steps here
    interval = {"steps": 10, "epochs": steps, "seconds": 2 * steps}[backups]
    assert accounting.lost_steps is not None and max(0, own_lost) <= accounting.lost_steps <= interval
    own_wall = (finished - attempts[0].started_at).total_seconds()  # the test's clock: first attempt to the end
    assert own_wall - 10 <= accounting.wall_seconds <= own_wall + 1  # less the final model save and teardown
    assert accounting.training_seconds == pytest.approx(sum(r.seconds for r in history), abs=0.05)
    # goodput is useful over wall time; the wall time holds the gap from the failure to the resumed attempt (both
    # seconds are rounded to 0.01 s in the record, the goodput from the unrounded ones: up to ~3e-4 apart)
    assert accounting.goodput == pytest.approx(accounting.training_seconds / accounting.wall_seconds, abs=5e-4)
    assert accounting.training_seconds <= accounting.wall_seconds - resumed_after + 0.05

    # TensorBoard, read with its own reader: every epoch's scalars, steps continuing across the restart
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(store.path("killed", "tensorboard"))
    files = sorted(folder.iterdir())
    finished_an_epoch = {r.attempt for r in store.read_history_lines("killed")}
    # One event file per attempt that finished an epoch. The killed attempt may also have one without: with step
    # backups the kill can land in the first epoch, after per-step scalars were written; or the kill hit its epoch
    # end between the scalars' upload and the history line (that epoch was then trained again).
    with_files = {int(file.name.rsplit("attempt-", 1)[1]) for file in files}
    assert len(files) == len(with_files) and finished_an_epoch <= with_files <= {1, 2}, files
    seen: dict[int, float] = {}
    for file in files:
        events = EventAccumulator(str(file), size_guidance={"tensors": 0})  # 0: keep every event
        events.Reload()
        if "val_loss" not in events.Tags()["tensors"]:  # per-step scalars only: the attempt ended inside epoch 1
            assert int(file.name.rsplit("attempt-", 1)[1]) not in finished_an_epoch, file
            continue
        steps = [e.step for e in events.Tensors("val_loss")]
        assert steps == sorted(steps) and all(1 <= s <= EPOCHS for s in steps)
        for event in events.Tensors("val_loss"):
            seen[event.step] = float(tf_value(event))
    assert sorted(seen) == list(range(1, EPOCHS + 1))
    assert seen[EPOCHS] == pytest.approx(history[-1].metrics["val_loss"], rel=1e-6)
    resumed_from = min(e.step for e in _tensors(files[-1], "val_loss"))
    assert resumed_from == attempts[1].start_epoch + 1  # the second attempt continues, not from step 1
    # Per-step scalars every 8 global steps, on one axis across attempts: the resumed attempt goes on from where
    # it restored (steps between the backup and the kill are written twice), never from 0.
    per_step = [sorted(e.step for e in _tensors(file, "step/loss")) for file in files]
    assert set().union(*per_step) == set(range(8, EPOCHS * 32 + 1, 8))
    restored_at = attempts[1].start_epoch * 32 + attempts[1].start_step
    assert per_step[-1][0] == restored_at + (8 - restored_at % 8)

    # What the backups cost, recorded per backup (kept when the backup itself is pruned): status shows it.
    records = store.read_backup_records("killed")
    assert {r.attempt for r in records} == {1, 2} and len(records) >= EPOCHS
    assert all(0 <= r.blocking_seconds < 5 and r.upload_seconds >= 0 and r.size_bytes > 0 for r in records)
    assert records[-1].name == store.backup_names("killed")[-1]


def test_a_damaged_latest_backup_is_skipped_with_the_reason_logged(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app

    store = JobStore(str(tmp_path / "store"))
    raw = quickstart_raw()
    raw.update(name="damaged", epochs=8, failures={"max_failures": 0}, backup={"every_epochs": 1, "keep": 3})
    raw["scaling"]["workers"] = 1
    spec = write_spec(tmp_path, raw, "damaged.yaml")
    outcome: dict[str, Any] = {}

    def drive() -> None:
        try:
            run_job(spec, store=store)
        except Exception as exc:  # the kill fails this run: max_failures is 0
            outcome["error"] = exc

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while len(store.backup_names("damaged") if "damaged" in store.job_names() else []) < 2:
        assert thread.is_alive() and time.monotonic() < deadline, "the job never took two backups"
        time.sleep(0.1)
    os.kill(worker_pid(store, "damaged", 0, world=1), signal.SIGKILL)
    thread.join(timeout=200)
    assert store.read_state("damaged").status is JobStatus.FAILED, outcome
    *older, newest = store.backup_names("damaged")
    data = Path(store.path("damaged", "checkpoints", newest, "state.data-00000-of-00001"))
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte: same size, other checksum
    data.write_bytes(bytes(damaged))
    # as on another node: this node's own copy of the newest backup (intact, so it would be restored from) is gone
    from orchestrator.worker import backup_cache

    shutil.rmtree(backup_cache.job_folder(store.url, "damaged"), ignore_errors=True)

    result = CliRunner().invoke(app, ["resume", "damaged", "--store", store.url])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert store.read_attempts("damaged")[-1].restored_from == older[-1]
    log = store.read_logs("damaged")["worker-0.log"]
    assert f"skipping backup {newest}: backup {newest} of job 'damaged': state.data-00000-of-00001 has" in log
    assert "trying an older one" in log
    assert_each_epoch_trained_once(store, "damaged", 8, 4096 // 64)


def test_a_sigtermed_worker_gets_a_just_in_time_backup_and_no_step_is_lost(tmp_path: Path, reference: JobStore) -> None:
    """SIGTERM (a notice) instead of SIGKILL: every worker backs up at the same step, the attempt ends, and the
    next one resumes from exactly that step; the model is the uninterrupted one."""
    store = JobStore(str(tmp_path / "store"))
    thread, outcome = start_job(tmp_path, "noticed", store)
    deadline = time.monotonic() + 300
    while len(store.read_history("noticed") if "noticed" in store.job_names() else []) < 2:
        assert thread.is_alive() and time.monotonic() < deadline, "the job never finished two epochs"
        time.sleep(0.1)
    time.sleep(seeded_delay(0.2, 0.6, "SIGTERM"))  # inside the third epoch
    os.kill(worker_pid(store, "noticed", 1), signal.SIGTERM)
    thread.join(timeout=300)
    assert not thread.is_alive(), "the job did not finish after the SIGTERM"
    assert outcome["result"].status is JobStatus.SUCCEEDED

    attempts = store.read_attempts("noticed")
    assert len(attempts) == 2
    log = store.read_logs("noticed")["worker-0.log"]
    match = re.search(
        r"backup (e\d+-s\d+) taken .*\(just-in-time: rank 1 received SIGTERM \(TensorFlow task /job:worker/task:1\)\)",
        log,
    )
    assert match, log[-2000:]
    assert attempts[1].restored_from == match.group(1)  # resumed at the very step the notice was acted on
    assert attempts[1].start_step > 0 or attempts[1].start_epoch >= 2
    assert "PreemptionNoticeError" in store.read_logs("noticed")["controller.log"]

    resumed, uninterrupted = final_model(store, "noticed"), final_model(reference, "uninterrupted")
    history = assert_each_epoch_trained_once(store, "noticed", EPOCHS, 2048 // 64, model=resumed)
    uninterrupted_history = reference.read_history("uninterrupted")
    assert [r.learning_rate for r in history] == [r.learning_rate for r in uninterrupted_history]
    for got, want in zip(resumed.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_with_a_sigterm_grace_period_the_workers_train_through_it_and_back_up_again_before_it_ends(
    tmp_path: Path,
) -> None:
    """``failures.sigterm_grace_s``: a just-in-time backup at once, training on through the grace period, a last
    backup just before it ends (the platform SIGKILLs the worker then, if it is still there), and the next
    attempt resumes from that last backup: the notice period was spent training, and the model is the
    uninterrupted one. Epochs of 96 steps (the other tests' 32 would all be done within the grace period), so
    this test has its own uninterrupted run."""
    grace, examples = 9.0, 6144  # the lead (longest control-point gap + 2 backups + 2 s) is 4-5 s on a busy CI machine
    store = JobStore(str(tmp_path / "store"))
    reference = JobStore(str(tmp_path / "reference"))
    run_job(spec_for(tmp_path, "uninterrupted", examples=examples), store=reference)
    outcome: dict[str, Any] = {}
    spec = spec_for(tmp_path, "graced", sigterm_grace_s=grace, examples=examples)
    thread = threading.Thread(target=lambda: outcome.update(result=run_job(spec, store=store)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while len(store.read_history("graced") if "graced" in store.job_names() else []) < 1:
        assert thread.is_alive() and time.monotonic() < deadline, "the job never finished an epoch"
        time.sleep(0.1)
    time.sleep(seeded_delay(0.2, 0.6, "SIGTERM"))  # inside the second epoch: more than the grace period to go
    pid = worker_pid(store, "graced", 1)
    signalled = time.time()
    os.kill(pid, signal.SIGTERM)
    time.sleep(max(0.0, signalled + grace - time.time()))
    with contextlib.suppress(ProcessLookupError):  # the end of the grace period: the platform takes the worker
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive(), "the job did not finish after the SIGTERM"
    assert outcome["result"].status is JobStatus.SUCCEEDED

    records = [r for r in store.read_backup_records("graced") if r.attempt == 1]
    jit = [r for r in records if r.reason.startswith("just-in-time: rank 1 received SIGTERM")]
    last = [r for r in records if r.reason.startswith("last backup before the deadline")]
    assert len(jit) == 1 and len(last) == 1, [r.reason for r in records]
    assert jit[0].at.timestamp() < last[0].at.timestamp() < signalled + grace  # stored before the deadline
    assert (last[0].epoch, last[0].step) > (jit[0].epoch, jit[0].step)  # it trained in between
    assert "rank 1 received SIGTERM" in last[0].reason
    attempts = store.read_attempts("graced")
    assert len(attempts) == 2 and attempts[1].restored_from == last[0].name
    log = store.read_logs("graced")["worker-0.log"]
    assert "training on through the notice period: a last backup about" in log

    resumed, uninterrupted = final_model(store, "graced"), final_model(reference, "uninterrupted")
    history = assert_each_epoch_trained_once(store, "graced", EPOCHS, examples // 64, model=resumed)
    uninterrupted_history = reference.read_history("uninterrupted")
    assert [r.learning_rate for r in history] == [r.learning_rate for r in uninterrupted_history]
    for got, want in zip(resumed.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def ready_warm_processes(count: int, deadline: float) -> list[int]:
    """Wait for ``count`` idle warm processes on this node that have finished their preload; their pids."""
    import ray

    from orchestrator.raylet import idle_warm_processes
    from orchestrator.raylet import raylet as _raylet
    from orchestrator.worker.preload import preloaded_seconds

    context = ray.get_runtime_context()  # this test is the jobs' driver: the same Ray job as their workers
    stub = _raylet(context.get_node_id())
    while True:
        ready = [pid for pid in idle_warm_processes(stub, context.get_job_id()) if preloaded_seconds(pid)]
        if len(ready) >= count:
            return ready
        assert time.monotonic() < deadline, f"only {len(ready)} warm process(es) ready"
        time.sleep(0.5)


def test_a_restarted_worker_group_lands_in_warm_processes_and_ends_with_the_same_weights(tmp_path: Path) -> None:
    """After the attempt's first step, the node's pool holds a warm process per worker; a SIGKILL then restarts
    both workers in those processes (no TensorFlow import on the restart path), and the run still ends with the
    uninterrupted run's weights. Epochs of 192 steps, so that the job is still training when the pool's processes
    have imported TensorFlow at their low priority beside it on an idle 2-core machine; hence its own
    uninterrupted run."""
    from orchestrator.recovery import WarmStart, warm_starts

    examples = 12288
    reference = JobStore(str(tmp_path / "reference"))
    run_job(spec_for(tmp_path, "uninterrupted", examples=examples), store=reference)
    store = JobStore(str(tmp_path / "store"))
    thread, outcome = start_job(tmp_path, "warm", store, examples=examples)
    deadline = time.monotonic() + 300
    while len(store.backup_names("warm") if "warm" in store.job_names() else []) < 1:
        assert thread.is_alive() and time.monotonic() < deadline, "the job never took a backup"
        time.sleep(0.2)
    ready = ready_warm_processes(2, deadline)
    killed = worker_pid(store, "warm", 1)
    assert killed not in ready
    os.kill(killed, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and outcome["result"].status is JobStatus.SUCCEEDED

    attempts = store.read_attempts("warm")
    assert len(attempts) == 2
    _, second = attempts
    assert [w.rank for w in second.workers] == [0, 1]
    assert {w.pid for w in second.workers} <= set(ready)  # the restarted workers run in the pool's processes
    assert warm_starts(store.read_failures("warm"), attempts) == [
        WarmStart(attempt=2, warm=2, workers=2, cold_ranks=())
    ]
    assert "process" not in second.startup  # no import on the restart path
    assert "2/2 restarted worker(s) landed in warm processes" in store.read_logs("warm")["worker-0.log"]
    assert "warm pool: asked the raylet for" in store.read_logs("warm")["worker-0.log"]
    for rank in (0, 1):  # the restarted workers read the job's arrays back instead of making them again
        assert "data: read from this node's cache" in store.read_logs("warm")[f"worker-{rank}.log"]
    for rank in (0, 1):  # each worker restored from its own node's copy of the backup, downloading nothing
        assert re.search(
            r"backup e\d{5}-s\d{7}: (\d+) of \1 file\(s\) read from this node's copy",
            store.read_logs("warm")[f"worker-{rank}.log"],
        ), rank

    history = store.read_history("warm")
    assert [r.learning_rate for r in history] == [r.learning_rate for r in reference.read_history("uninterrupted")]
    resumed, uninterrupted = final_model(store, "warm"), final_model(reference, "uninterrupted")
    assert int(resumed.optimizer.iterations.numpy()) == int(uninterrupted.optimizer.iterations.numpy())
    for got, want in zip(resumed.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
