"""The warm pool: the Ray internals it relies on, the setup hook, and how a restart's workers are counted warm."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import ray

from orchestrator.launcher import job_runtime_env
from orchestrator.records import AttemptRecord, FailureRecord, WorkerStart
from orchestrator.recovery import WarmStart, warm_starts
from orchestrator.worker import preload

START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def worker(rank: int, preloaded: float | None, started: float = 0.0) -> WorkerStart:
    return WorkerStart(
        rank=rank,
        node="abc",
        pid=100 + rank,
        process_started_at=at(started),
        preloaded_at=None if preloaded is None else at(preloaded),
    )


def attempt(number: int, seconds: float, workers: list[WorkerStart]) -> AttemptRecord:
    return AttemptRecord(attempt=number, started_at=at(seconds), start_epoch=0, workers=workers)


def test_the_ray_internals_the_pool_uses_are_all_there() -> None:
    """Fails on a Ray upgrade that moves the raylet's PrestartWorkers/GetNodeStats RPCs, their fields, the
    authenticated gRPC channel helper or the internal key-value store; the pool then turns itself off at run time
    with the same reason in the worker's log."""
    from orchestrator.raylet import ray_internals_problem

    assert ray_internals_problem() is None
    assert ray.__version__.startswith("2.60."), "a new Ray: check the warm pool against it, then widen this"


def test_ray_train_gives_its_workers_the_runtime_env_the_pool_copies() -> None:
    """Ray Train V2 starts its worker actors with RunConfig.worker_runtime_env (plus its own variables), so the
    flag the driver sets there is in their environment, and only theirs."""
    from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

    env = WorkerGroup._get_worker_runtime_env({"env_vars": {preload.TRAIN_WORKER_FLAG: "1"}})
    assert env["env_vars"][preload.TRAIN_WORKER_FLAG] == "1"


def test_the_job_runtime_env_names_the_hook_and_the_hook_resolves() -> None:
    runtime_env = job_runtime_env()
    assert runtime_env["env_vars"]["TF_USE_LEGACY_KERAS"] == "1"
    module, _, function = runtime_env["worker_process_setup_hook"].rpartition(".")
    assert getattr(importlib.import_module(module), function) is preload.preload


def test_the_hook_does_nothing_in_a_process_that_is_not_a_training_worker() -> None:
    os.environ.pop(preload.TRAIN_WORKER_FLAG, None)
    preload.preload()
    assert preload.preload_state() is None


def test_the_hook_imports_tensorflow_and_the_worker_modules_in_a_training_workers_process() -> None:
    script = (
        "import json, os, sys, time\n"
        "from orchestrator.worker import preload\n"
        "before = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "preload.preload()\n"
        "state = preload.preload_state()\n"
        "print(json.dumps({'seconds': state.seconds, 'error': state.error, 'restored': state.priority_restored,\n"
        "    'priority_same': os.getpriority(os.PRIO_PROCESS, 0) == before,\n"
        "    'modules': [m in sys.modules for m in preload.MODULES], 'keras': sys.modules['tf_keras'].__name__}))\n"
    )
    env = {**os.environ, preload.TRAIN_WORKER_FLAG: "1"}
    env.pop("TF_USE_LEGACY_KERAS", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["error"] is None and report["seconds"] > 0
    assert all(report["modules"])
    assert report["restored"] and report["priority_same"]  # the import ran niced; training will not


def test_a_restart_counts_a_worker_warm_only_if_its_process_had_preloaded_before_the_failure() -> None:
    attempts = [
        attempt(1, 0, [worker(0, None), worker(1, None)]),  # the first attempt: not a restart
        attempt(2, 60, [worker(0, 20), worker(1, 31)]),  # rank 1's process was still importing at the failure
        attempt(3, 100, [worker(0, 70), worker(1, 75)]),
    ]
    failures = [FailureRecord(failed_at=at(30), reasons=["x"]), FailureRecord(failed_at=at(90), reasons=["y"])]
    assert warm_starts(failures, attempts) == [
        WarmStart(attempt=2, warm=1, workers=2, cold_ranks=(1,)),
        WarmStart(attempt=3, warm=2, workers=2, cold_ranks=()),
    ]


def test_a_resume_without_a_failure_and_an_attempt_without_workers_are_left_out() -> None:
    attempts = [attempt(1, 0, [worker(0, None)]), attempt(2, 60, [worker(0, 10)]), attempt(3, 100, [])]
    failures = [FailureRecord(failed_at=at(90), reasons=["y"])]  # before attempt 3 only, which has no workers
    assert warm_starts(failures, attempts) == []


def test_the_log_line_says_which_ranks_started_cold_and_why() -> None:
    from orchestrator.worker.warm_pool import describe_warm_start

    text = describe_warm_start([worker(0, 20), worker(1, 33), worker(2, None)], at(30))
    assert text.startswith("1/3 restarted worker(s) landed in warm processes; cold: ")
    assert "rank 1: its process finished preloading 3.0 s after the failure" in text
    assert "rank 2: a new process (no warm process was idle on node abc)" in text
    assert describe_warm_start([worker(0, 20)], None).endswith("(not a restart)")


def test_status_shows_each_restarts_warm_workers_and_the_total() -> None:
    from rich.console import Console

    from orchestrator.records import JobState
    from orchestrator.recovery import Accounting
    from orchestrator.status import JobStatus
    from orchestrator.views import StatusOutput

    attempts = [attempt(1, 0, [worker(0, None), worker(1, None)]), attempt(2, 60, [worker(0, 20), worker(1, 31)])]
    accounting = Accounting(
        wall_seconds=90,
        training_seconds=80,
        goodput=0.89,
        restarts=1,
        preemptions=0,
        lost_steps=3,
        time_to_resume={2: 30.0},
    )
    output = StatusOutput(
        name="j",
        id="x",
        store="/s",
        summary="s",
        state=JobState(status=JobStatus.RUNNING),
        progress=None,
        epochs_done=4,
        epochs=5,
        attempts=attempts,
        failures=[FailureRecord(failed_at=at(30), reasons=["x"])],
        backups=[],
        accounting=accounting,
    )
    console = Console(width=200, record=True)
    console.print(output.render())
    text = console.export_text()
    assert "attempt 2 started at epoch 1 from backup (none), 30.0 s after a failure, 1/2 workers warm" in text
    assert "restarts 1 (0 preempted, warm 1/2 workers), lost steps 3" in text
