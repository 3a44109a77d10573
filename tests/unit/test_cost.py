"""What a job cost (``orchestrator.cost``): the held hours priced at spot, the same on demand and without any
restart, and what the restarts cost; from the records the job's own writers put in a store (tmp_path), step by
step: one attempt; a kill and a restart; a notice; an elastic resize; a job still running; damaged records. Then
where the prices come from (the spec, else the config file) and how `status` and `compare` show them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.cost import CostSummary, job_cost
from orchestrator.errors import ConfigError
from orchestrator.handle import status_of
from orchestrator.records import (
    AttemptRecord,
    BackupRecord,
    EpochRecord,
    FailureRecord,
    Progress,
    WorkerStart,
    utc_now,
)
from orchestrator.recovery import run_accounting
from orchestrator.spec import CostSpec, JobSpec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.user_config import prices
from tests.conftest import REPO, quickstart_raw, write_spec

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
STEPS = 100  # steps per epoch: 1200 s an epoch on two workers, 12 s a step
PRICES = {"spot_per_hour": 0.9, "on_demand_per_hour": 3.0}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_job(store: JobStore, name: str = "job", cost: dict[str, Any] | None = None, **scaling: Any) -> JobSpec:
    raw = {**quickstart_raw(), "name": name, "cost": PRICES if cost is None else cost}
    raw["scaling"] = {**raw["scaling"], **scaling}
    spec = JobSpec.model_validate(raw)
    store.create_job(spec)
    store.set_status(name, JobStatus.RUNNING, attempt=1)
    return spec


def attempt(store: JobStore, number: int, start: float, epoch: int, step: int = 0, **fields: Any) -> None:
    """``attempts.jsonl``'s line, at a chosen time (``start_attempt`` stamps the clock's)."""
    workers = fields.pop("workers", None)
    record = AttemptRecord(
        attempt=number,
        started_at=at(start),
        start_epoch=epoch,
        start_step=step,
        restored_from=fields.pop("restored_from", None),
        workers=[WorkerStart(rank=r, node="n", pid=100 + r) for r in range(workers or 0)],
        **fields,
    )
    store._append_line(store.path("job", "attempts.jsonl"), record)


def epoch(store: JobStore, number: int, att: int, end: float, seconds: float, first_step: int = 0) -> None:
    store.append_history(
        "job",
        EpochRecord(
            epoch=number,
            attempt=att,
            learning_rate=1e-3,
            metrics={"loss": 1.0},
            seconds=seconds,
            first_step=first_step,
            ended_at=at(end),
        ),
    )


def fail(store: JobStore, when: float, epoch_: int | None, step: int | None, kind: str = "failure") -> None:
    store.append_failure(
        "job",
        FailureRecord(
            failed_at=at(when),
            reasons=["rank 1: killed"],
            kind=kind,  # type: ignore[arg-type]
            epoch=epoch_,
            step=step,
            steps_per_epoch=STEPS if epoch_ is not None else None,
        ),
    )


def end(store: JobStore, when: float, status: JobStatus = JobStatus.SUCCEEDED) -> None:
    store.set_status("job", status, ended_at=at(when))


def cost(store: JobStore, spec: JobSpec, now: float | None = None) -> CostSummary | None:
    state, progress = store.read_state("job"), store.read_progress("job")
    return job_cost(
        prices(spec.cost),
        spec.scaling,
        store.read_attempts("job"),
        store.read_failures("job"),
        store.read_history("job"),
        store.read_history_lines("job"),
        ended_at=state.ended_at,
        backups=store.read_backup_records("job"),
        branches=store.read_branches("job"),
        progress=progress,
        ended_without_backup=progress if state.status in (JobStatus.STOPPED, JobStatus.FAILED) else None,
        now=None if now is None else at(now),
    )


def hours(unit_seconds: float) -> float:
    return unit_seconds / 3600


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(str(tmp_path / "store"))


def test_one_attempt_without_a_failure_costs_its_hours_at_the_spot_price(store: JobStore) -> None:
    spec = new_job(store)
    attempt(store, 1, 0, 0, workers=2)
    for n in range(3):
        epoch(store, n, 1, 1200 * (n + 1), 1200)
    end(store, 3600)
    c = cost(store, spec)
    assert c is not None
    assert (c.unit, c.currency, c.held_hours, c.useful_hours) == ("worker", "$", 2.0, 2.0)  # 1 h x 2 workers
    assert (c.cost, c.on_demand_cost, c.uninterrupted_cost) == (pytest.approx(1.8), 6.0, 6.0)
    assert (c.restart_hours, c.lost_work_hours, c.interruption_cost) == (0.0, 0.0, 0.0)


def test_a_kill_and_restart_costs_the_time_to_resume_and_the_steps_trained_again(store: JobStore) -> None:
    """Attempt 1 ends epoch 0 at 1200 s and is killed at step 50 of epoch 1 (1800 s); attempt 2 starts from the
    backup after epoch 0 at 2400 s and trains epochs 1 and 2."""
    spec = new_job(store)
    attempt(store, 1, 0, 0, workers=2)
    epoch(store, 0, 1, 1200, 1200)
    fail(store, 1800, 1, 50)
    attempt(store, 2, 2400, 1, restored_from="e00001-s0000000", workers=2)
    epoch(store, 1, 2, 3600, 1200)
    epoch(store, 2, 2, 4800, 1200)
    end(store, 4800)
    c = cost(store, spec)
    assert c is not None
    assert c.held_hours == pytest.approx(hours((1800 + 600 + 2400) * 2), rel=1e-5)
    assert c.useful_hours == pytest.approx(hours(3600 * 2))
    assert c.restart_hours == pytest.approx(hours(600 * 2), rel=1e-5)
    assert c.lost_work_hours == pytest.approx(hours(50 * 12 * 2), rel=1e-5)  # 50 steps at 12 s, on 2 workers
    assert c.interruption_cost == pytest.approx((hours(1200) + hours(1200)) * 0.9, rel=1e-5)
    assert c.held_hours == pytest.approx(c.useful_hours + c.restart_hours + c.lost_work_hours, rel=1e-5)
    accounting = run_accounting(
        store.read_attempts("job"),
        store.read_failures("job"),
        store.read_history("job"),
        store.read_history_lines("job"),
        store.read_state("job").ended_at,
    )  # the same hours as the accounting's wall, on 2 workers
    assert c.held_hours == pytest.approx(hours(accounting.wall_seconds * 2), rel=1e-5)
    assert c.cost == pytest.approx(c.held_hours * 0.9, rel=1e-5) and c.on_demand_cost == pytest.approx(
        c.held_hours * 3.0, rel=1e-5
    )


def test_a_notice_loses_no_steps_and_its_split_epoch_counts_as_useful(store: JobStore) -> None:
    """A notice at step 50 of epoch 1: a just-in-time backup there, and attempt 2 resumes from it 100 s later."""
    spec = new_job(store)
    attempt(store, 1, 0, 0, workers=2)
    epoch(store, 0, 1, 1200, 1200)
    store.append_backup_record(
        "job",
        BackupRecord(
            name="e00001-s0000050",
            epoch=1,
            step=50,
            attempt=1,
            reason="just-in-time: SIGTERM",
            blocking_seconds=0,
            upload_seconds=0,
            size_bytes=1,
            at=at(1800),
        ),
    )
    fail(store, 1800, 1, 50, kind="notice")
    attempt(store, 2, 1900, 1, 50, restored_from="e00001-s0000050", workers=2)
    epoch(store, 1, 2, 2500, 600, first_step=50)
    epoch(store, 2, 2, 3700, 1200)
    end(store, 3700)
    c = cost(store, spec)
    assert c is not None
    assert c.lost_work_hours == 0.0
    assert c.restart_hours == pytest.approx(hours(100 * 2), rel=1e-5)
    assert c.interruption_cost == pytest.approx(hours(200) * 0.9, rel=1e-5)
    assert c.useful_hours == pytest.approx(hours((1200 + 600 + 600 + 1200) * 2), rel=1e-5)  # 600 s before it
    assert c.held_hours == pytest.approx(hours((1800 + 100 + 1800) * 2), rel=1e-5)


def test_an_elastic_job_pays_for_the_workers_each_attempt_had(store: JobStore) -> None:
    """Preempted at step 50 of epoch 1 on 2 workers; attempt 2 continues on 1 worker (epoch 1 takes twice as
    long); then grows back to 2 (a resize, no failure) for epoch 2."""
    spec = new_job(store, min_workers=1)
    attempt(store, 1, 0, 0, workers=2)
    epoch(store, 0, 1, 1200, 1200)
    fail(store, 1800, 1, 50, kind="preemption")
    attempt(store, 2, 1900, 1, restored_from="e00001-s0000000", workers=1)
    epoch(store, 1, 2, 4300, 2400)
    attempt(store, 3, 4400, 2, restored_from="e00002-s0000000", workers=2)
    epoch(store, 2, 3, 5600, 1200)
    end(store, 5600)
    c = cost(store, spec)
    assert c is not None
    assert c.held_hours == pytest.approx(hours(1800 * 2 + 100 * 1 + 2400 * 1 + 1200 * 2), rel=1e-5)
    assert c.useful_hours == pytest.approx(hours(1200 * 2 + 2400 * 1 + 1200 * 2), rel=1e-5)
    assert c.restart_hours == pytest.approx(hours(100 * 1), rel=1e-5)  # the group that came back: 1 worker
    assert c.lost_work_hours == pytest.approx(hours(50 * 12 * 2), rel=1e-5)  # trained on 2
    # with the spec's 2 workers throughout, attempt 2 would cost twice as much
    assert c.cost == pytest.approx(hours(8500) * 0.9, rel=1e-5)


def test_a_gpu_job_prices_gpu_hours_from_the_attempts_workers_or_replicas(store: JobStore) -> None:
    spec = new_job(store, gpus_per_worker=4)
    attempt(store, 1, 0, 0, workers=2)
    fail(store, 1800, None, None)
    attempt(store, 2, 2400, 0, replicas=4)  # no workers recorded: 4 replicas at 4 GPUs each = 1 worker
    end(store, 4200, JobStatus.FAILED)
    c = cost(store, spec)
    assert c is not None and c.unit == "GPU"
    assert c.held_hours == pytest.approx(hours(1800 * 8 + 600 * 4 + 1800 * 4), rel=1e-5)


def test_a_running_job_costs_what_it_held_so_far(store: JobStore) -> None:
    spec = new_job(store)
    attempt(store, 1, 0, 0, workers=2)
    epoch(store, 0, 1, 1200, 1200)
    assert cost(store, spec, now=1800).held_hours == 1.0  # type: ignore[union-attr]
    assert cost(store, spec, now=3600).cost == pytest.approx(1.8)  # type: ignore[union-attr]
    started = utc_now() - timedelta(hours=1)  # and without a clock given: now
    store._append_line(store.path("job", "attempts.jsonl"), AttemptRecord(attempt=2, started_at=started, start_epoch=1))
    held = cost(store, spec).held_hours  # type: ignore[union-attr]
    assert hours(1200 * 2 + 3600 * 2) <= held < hours(1200 * 2 + 3700 * 2)


def test_damaged_or_missing_records_give_finite_figures_or_say_unknown(store: JobStore) -> None:
    spec = new_job(store)
    assert cost(store, spec, now=60) == CostSummary.model_validate(  # no attempt yet: nothing held
        {
            "currency": "$",
            "unit": "worker",
            "spot_per_hour": 0.9,
            "on_demand_per_hour": 3.0,
            **dict.fromkeys(("held_hours", "useful_hours", "restart_hours", "lost_work_hours"), 0.0),
            **dict.fromkeys(("cost", "on_demand_cost", "uninterrupted_cost", "interruption_cost"), 0.0),
        }
    )
    attempt(store, 1, 0, 0)  # no workers, no replicas recorded: the spec's 2
    epoch(store, 0, 1, 1200, math.nan)
    fail(store, 1800, None, None)  # where it was is not known
    attempt(store, 2, 2400, 1)
    epoch(store, 1, 2, 3600, 1200)
    end(store, 3600)
    c = cost(store, spec)
    assert c is not None
    assert c.held_hours == pytest.approx(hours(3600 * 2), rel=1e-5)
    assert c.useful_hours == pytest.approx(hours(1200 * 2), rel=1e-5)  # the NaN epoch counts as nothing
    assert c.lost_work_hours is None  # said unknown, not 0
    assert c.interruption_cost == pytest.approx(hours(600 * 2) * 0.9, rel=1e-5)  # the restart alone
    assert all(math.isfinite(v) for v in c.model_dump().values() if isinstance(v, float))


def test_steps_lost_before_any_epoch_ended_are_unknown_work_not_free(store: JobStore) -> None:
    spec = new_job(store)
    attempt(store, 1, 0, 0, workers=2)
    fail(store, 600, 0, 30)  # 30 steps in, no epoch has ended: how long a step takes is not known
    attempt(store, 2, 700, 0, workers=2)
    c = cost(store, spec, now=800)
    assert c is not None and c.lost_work_hours is None
    assert c.interruption_cost == pytest.approx(hours(100 * 2) * 0.9, rel=1e-5)


def test_no_price_means_no_cost_and_one_price_gives_its_figures(store: JobStore) -> None:
    spec = new_job(store, cost={})
    attempt(store, 1, 0, 0, workers=2)
    assert cost(store, spec, now=3600) is None
    on_demand_only = spec.model_copy(update={"cost": CostSpec(on_demand_per_hour=2.0, currency="EUR ")})
    c = cost(store, on_demand_only, now=3600)
    assert c is not None and (c.cost, c.interruption_cost, c.on_demand_cost, c.currency) == (None, None, 4.0, "EUR ")


def test_the_spec_wins_over_the_config_file_field_by_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[cost]\nspot_per_hour = 1.5\non_demand_per_hour = 4\ncurrency = "EUR "\n')
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(config))
    assert prices(CostSpec()) == CostSpec(spot_per_hour=1.5, on_demand_per_hour=4.0, currency="EUR ")
    assert prices(CostSpec(spot_per_hour=0.5)) == CostSpec(spot_per_hour=0.5, on_demand_per_hour=4.0, currency="EUR ")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", "")
    assert prices(CostSpec()) is None and prices(CostSpec(currency="£")) is None


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("spot_per_hour = -1", "cost.spot_per_hour: got -1, must be greater than or equal to 0"),
        ("on_demand_per_hour = nan", "cost.on_demand_per_hour: got nan, must be a finite number"),
        ("spot_per_hour = true", "cost.spot_per_hour: got true, must be a number, not true/false"),
        ("spot = 1", "cost.spot: unknown key; allowed keys: spot_per_hour, on_demand_per_hour, currency"),
    ],
)
def test_a_bad_price_in_the_config_file_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, message: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"[cost]\n{toml}\n")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        prices(CostSpec())
    assert caught.value.message == f"config file {config}: {message}"


def test_a_bad_price_in_the_spec_is_one_line_naming_it(tmp_path: Path) -> None:
    raw = {**quickstart_raw(), "cost": {"spot_per_hour": -0.5, "on_demand_per_hour": ".inf"}}
    path = write_spec(tmp_path, raw)
    path.write_text(path.read_text().replace("'.inf'", ".inf"))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "cost.spot_per_hour: got -0.5, must be greater than or equal to 0" in result.stderr
    assert "cost.on_demand_per_hour: got inf, must be a finite number" in result.stderr


def restarted_job(store: JobStore) -> None:
    """The kill-and-restart job, still running at its third epoch."""
    attempt(store, 1, 0, 0, workers=2)
    epoch(store, 0, 1, 1200, 1200)
    fail(store, 1800, 1, 50)
    attempt(store, 2, 2400, 1, restored_from="e00001-s0000000", workers=2)
    epoch(store, 1, 2, 3600, 1200)
    store.write_progress(
        "job", Progress(attempt=2, epoch=2, epochs=6, step=10, steps_per_epoch=STEPS, learning_rate=1e-3)
    )


def test_status_and_compare_show_the_cost_in_80_columns_piped_and_in_json(store: JobStore) -> None:
    new_job(store)
    restarted_job(store)
    new_job(store, "unpriced", cost={})
    command = [sys.executable, "-m", "orchestrator", "status", "job", "--store", store.url]
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(REPO), "ORCHESTRATOR_CONFIG": ""}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout  # a pipe
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80, out
    cost_lines = [line for line in lines[lines.index(next(x for x in lines if x.startswith("cost"))) :][:3]]
    assert cost_lines[0].startswith("cost ") and " so far: " in cost_lines[0] and "worker-hours at $0.90/h" in out
    assert "on demand $" in cost_lines[1] and "uninterrupted" in cost_lines[1]
    assert "restarts $0.60: 0.333 worker-hours restarting, 0.333 re-done" in cost_lines[2]
    unpriced = subprocess.run([*command[:4], "unpriced", *command[5:]], capture_output=True, text=True, env=env)
    assert unpriced.returncode == 0 and "cost" not in unpriced.stdout and "$" not in unpriced.stdout

    runner = CliRunner()
    result = runner.invoke(app, ["status", "job", "--store", store.url, "--json"])
    figures = json.loads(result.stdout)["cost"]
    assert figures["restart_hours"] == pytest.approx(1 / 3, rel=1e-5) and figures["currency"] == "$"
    assert figures["lost_work_hours"] == pytest.approx(1 / 3, rel=1e-5)
    assert json.loads(runner.invoke(app, ["status", "unpriced", "--store", store.url, "--json"]).stdout)["cost"] is None
    assert status_of(store, "job").cost == CostSummary.model_validate(figures)  # the Python API's status()

    compare = runner.invoke(app, ["compare", "job", "unpriced", "--store", store.url], env={"COLUMNS": "80"})
    assert compare.exit_code == 0 and "cost: the hours held x the spot price" in compare.stdout
    header = next(line for line in compare.stdout.splitlines() if "optimizer" in line)
    assert header.rstrip().endswith("cost") and max(map(len, compare.stdout.splitlines())) <= 80
    rows = json.loads(runner.invoke(app, ["compare", "job", "unpriced", "--store", store.url, "--json"]).stdout)
    assert rows["rows"][0]["cost"]["cost"] > 0 and rows["rows"][1]["cost"] is None
