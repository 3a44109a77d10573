"""When a preemption notice leads to a backup, a last backup, an ending or a wait (the worker-group side of it:
tests/integration/test_preemption.py and test_drain.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from orchestrator.worker.notice import SAFETY_S, WAIT_PAST_DEADLINE_S, NoticeClock

T0 = 1_700_000_000.0  # UNIX seconds


def paced(clock: NoticeClock, gap: float, points: int = 5) -> None:
    """Control points ``gap`` seconds apart (monotonic clock)."""
    for index in range(points):
        clock.control_point(index * gap)


def drain(deadline: float | None) -> SimpleNamespace:
    return SimpleNamespace(deadline_ms=None if deadline is None else int(deadline * 1000), preempted_node_to_ranks={})


def test_no_notice_no_action() -> None:
    assert NoticeClock(30.0).check(T0, None, None, None) is None


def test_sigterm_without_a_known_grace_period_backs_up_and_ends_at_once() -> None:
    clock = NoticeClock(None)
    action = clock.check(T0, "rank 1 received SIGTERM", T0, None)
    assert action is not None and action.backup.startswith("just-in-time: rank 1 received SIGTERM")
    assert action.end == "rank 1 received SIGTERM" and action.wait_until is None


def test_sigterm_with_a_grace_period_trains_on_and_backs_up_again_just_before_it_ends() -> None:
    clock = NoticeClock(30.0)
    paced(clock, 1.0)  # a control point every second
    first = clock.check(T0 + 0.2, "rank 1 received SIGTERM", T0, None)
    assert first is not None and first.end is None and first.wait_until is None  # back up, keep training
    assert "30 s before its deadline" in first.backup
    assert first.notes and "training on through the notice period" in first.notes[0]
    clock.backed_up(0.5)  # the just-in-time backup took 0.5 s: lead = 1 s gap + 2 * 0.5 + safety
    lead = 1.0 + 2 * 0.5 + SAFETY_S
    assert clock.lead() == pytest.approx(lead)
    assert clock.check(T0 + 1.2, "rank 1 received SIGTERM", T0, None) is None  # the same notice: nothing new
    assert clock.check(T0 + 30 - lead - 0.1, "rank 1 received SIGTERM", T0, None) is None
    last = clock.check(T0 + 30 - lead + 0.1, "rank 1 received SIGTERM", T0, None)
    assert last is not None and last.backup.startswith("last backup before the deadline")
    assert last.end == "rank 1 received SIGTERM"
    assert clock.check(T0 + 29.5, "rank 1 received SIGTERM", T0, None) is None  # only one last backup


def test_the_grace_period_counts_from_the_signal_not_from_the_control_point() -> None:
    clock = NoticeClock(10.0)
    paced(clock, 1.0)
    assert clock.check(T0 + 3.0, "rank 0 received SIGTERM", T0, None) is not None
    assert clock.check(T0 + 10 - clock.lead() + 0.01, "rank 0 received SIGTERM", T0, None) is not None


def test_a_notice_too_close_to_its_deadline_makes_the_just_in_time_backup_the_last() -> None:
    clock = NoticeClock(2.0)
    paced(clock, 1.0)
    action = clock.check(T0 + 0.5, "rank 1 received SIGTERM", T0, None)
    assert action is not None and action.backup.startswith("just-in-time") and action.end is not None
    assert clock.check(T0 + 1.0, "rank 1 received SIGTERM", T0, None) is None


def test_a_drain_trains_on_then_waits_for_ray_train_after_the_last_backup() -> None:
    clock = NoticeClock(None)  # a drain's deadline comes from Ray, whatever the SIGTERM setting
    paced(clock, 2.0)
    notice = drain(T0 + 30)
    first = clock.check(T0, None, None, notice)
    assert first is not None and first.backup.startswith("just-in-time: a node of the group is being drained")
    assert first.end is None and first.wait_until is None and first.notices == ("drain",)
    clock.backed_up(1.0)
    assert clock.check(T0 + 20, None, None, notice) is None  # lead 2 + 2 * 1 + SAFETY_S = 6 s
    last = clock.check(T0 + 25.5, None, None, notice)
    assert last is not None and last.backup.startswith("last backup before the deadline")
    assert last.end is None and last.wait_until == T0 + 30 + WAIT_PAST_DEADLINE_S and last.notices == ("drain",)


def test_a_drain_without_a_deadline_backs_up_once_and_trains_on() -> None:
    clock = NoticeClock(None)
    first = clock.check(T0, None, None, drain(None))
    assert first is not None and first.end is None and first.wait_until is None and not first.notes
    assert clock.check(T0 + 600, None, None, drain(None)) is None


def test_the_lead_follows_the_slowest_recent_control_point_gap_but_not_the_first_after_a_fit_starts() -> None:
    clock = NoticeClock(30.0)
    clock.control_point(0.0)
    clock.control_point(9.0)  # an epoch end with validation: a long gap
    clock.control_point(10.0)
    assert clock.lead() == pytest.approx(9.0 + SAFETY_S)
    fresh = NoticeClock(30.0)
    fresh.control_point(0.0)
    fresh.fit_started()  # the next gap holds a new fit()'s tracing
    fresh.control_point(20.0)
    fresh.control_point(21.0)
    assert fresh.lead() == pytest.approx(1.0 + SAFETY_S)


def test_a_sigterm_and_a_drain_together_end_the_attempt_at_the_earlier_deadline() -> None:
    clock = NoticeClock(60.0)
    paced(clock, 1.0)
    first = clock.check(T0, "rank 1 received SIGTERM", T0, drain(T0 + 20))
    assert first is not None and "SIGTERM" in first.backup and "drained" in first.backup and first.end is None
    assert first.notices == ("sigterm", "drain")
    last = clock.check(T0 + 19.5, "rank 1 received SIGTERM", T0, drain(T0 + 20))
    assert last is not None and last.end == "rank 1 received SIGTERM" and "drained" in last.backup
    assert set(last.notices) == {"sigterm", "drain"}  # the last backup before the earlier deadline serves both
