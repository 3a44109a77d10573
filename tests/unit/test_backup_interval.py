"""The time-based backup interval: Young's interval from measured costs, bounded by the overhead it may cost."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.backup_interval import DEFAULT_BLOCKING_S, MIN_S, PRIOR_MTBF_S, BackupInterval, young_interval
from orchestrator.errors import SpecError
from orchestrator.spec_loader import load_spec
from tests.conftest import quickstart_raw, write_spec


def test_young_interval_balances_the_backup_cost_against_the_work_a_failure_loses() -> None:
    # backing up costs C each time; a failure loses half an interval on average: tau = sqrt(2 C M) minimises both
    assert young_interval(0.05, 3600) == pytest.approx(math.sqrt(2 * 0.05 * 3600))
    cost, mtbf = 0.2, 600.0
    best = young_interval(cost, mtbf)
    waste = lambda tau: cost / tau + tau / (2 * mtbf)  # noqa: E731  (fraction of time lost)
    assert waste(best) < waste(best * 0.8) and waste(best) < waste(best * 1.25)


def test_before_any_restart_the_prior_sets_the_interval_and_the_first_backup_cost_tunes_it() -> None:
    interval = BackupInterval(max_overhead=0.01)
    assert interval.seconds(0.0) == pytest.approx(young_interval(DEFAULT_BLOCKING_S, PRIOR_MTBF_S))
    interval.backed_up(blocking_s=0.2, upload_s=0.0, at=10.0)
    assert interval.seconds(10.0) == pytest.approx(young_interval(0.2, PRIOR_MTBF_S))  # 38 s
    assert not interval.due(10.0 + 30) and interval.due(10.0 + 40)


def test_restarts_seen_shorten_the_interval_down_to_what_the_overhead_allows() -> None:
    interval = BackupInterval(max_overhead=0.01)
    interval.backed_up(blocking_s=0.03, upload_s=0.0, at=0.0)
    interval.observe_job(trained_s=1200.0, failures=4)  # a restart every 300 s of training
    assert interval.seconds(0.0) == pytest.approx(young_interval(0.03, 300.0))  # 4.2 s
    interval.observe_job(trained_s=40.0, failures=4)  # every 10 s: Young says 0.8 s, 1% overhead allows 3 s
    assert interval.seconds(0.0) == pytest.approx(0.03 / 0.01)


def test_the_overhead_cap_holds_for_a_large_model_and_uploads_never_queue() -> None:
    interval = BackupInterval(max_overhead=0.01)
    for _ in range(3):
        interval.backed_up(blocking_s=1.5, upload_s=20.0, at=0.0)
    interval.observe_job(trained_s=100.0, failures=10)
    assert interval.seconds(0.0) == pytest.approx(150.0)  # blocking 1.5 s may cost at most 1% of training
    small = BackupInterval(max_overhead=0.5)
    small.backed_up(blocking_s=0.01, upload_s=20.0, at=0.0)
    small.observe_job(trained_s=100.0, failures=10)
    assert small.seconds(0.0) == 20.0  # not before the last upload would have finished
    tiny = BackupInterval(max_overhead=0.5)
    tiny.backed_up(blocking_s=0.001, upload_s=0.0, at=0.0)
    tiny.observe_job(trained_s=10.0, failures=10)
    assert tiny.seconds(0.0) == MIN_S


def test_training_without_restarts_lengthens_the_interval_and_a_fixed_one_stays() -> None:
    interval = BackupInterval(max_overhead=0.5, started_at=0.0)  # no overhead cap in the way
    interval.backed_up(blocking_s=0.05, upload_s=0.0, at=0.0)
    interval.observe_job(trained_s=0.0, failures=1)
    early, later = interval.seconds(60.0), interval.seconds(6000.0)
    assert later == pytest.approx(early * 10)  # M grew 100x
    fixed = BackupInterval(max_overhead=0.01, fixed_s=7.0)
    assert fixed.seconds(1e6) == 7.0 and "every 7 s (backup.every_seconds)" in fixed.describe(0.0)
    assert "auto: backup blocks 50 ms, mean time between restarts 60 s (1 restart(s) in 60 s)" in interval.describe(
        60.0
    )


def test_every_seconds_defaults_to_auto_unless_every_steps_is_given(tmp_path: Path) -> None:
    raw = quickstart_raw()
    assert load_spec(write_spec(tmp_path, raw)).backup.time_interval() == "auto"
    raw["backup"] = {"every_steps": 10}
    assert load_spec(write_spec(tmp_path, raw)).backup.time_interval() is None  # the explicit setting wins
    raw["backup"] = {"every_seconds": 30, "every_steps": 10}
    assert load_spec(write_spec(tmp_path, raw)).backup.time_interval() == 30
    raw["backup"] = {"every_seconds": None}
    assert load_spec(write_spec(tmp_path, raw)).backup.time_interval() is None


@pytest.mark.parametrize(("value", "expected"), [("0.5", "at least 1"), ("often", "a number of seconds")])
def test_a_bad_every_seconds_is_a_one_line_error(tmp_path: Path, value: str, expected: str) -> None:
    raw = quickstart_raw()
    raw["backup"] = {"every_seconds": value if value == "often" else float(value)}
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(tmp_path, raw))
    [problem] = str(caught.value).splitlines()[1:]  # one problem, on one line
    assert "backup.every_seconds: got" in problem and expected in problem, problem
    assert "auto" in problem and "null" in problem
