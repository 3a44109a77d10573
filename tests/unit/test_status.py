from __future__ import annotations

import pytest

from orchestrator.errors import InvalidTransitionError
from orchestrator.status import ALLOWED_TRANSITIONS, JobStatus, check_transition


def test_every_status_has_its_transitions_listed() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(JobStatus)


def test_succeeded_only_reopens_as_pending() -> None:
    """`resume --from-epoch N` may branch a finished job; nothing else moves it."""
    check_transition("j", JobStatus.SUCCEEDED, JobStatus.PENDING)
    for status in set(JobStatus) - {JobStatus.SUCCEEDED, JobStatus.PENDING}:
        with pytest.raises(InvalidTransitionError):
            check_transition("j", JobStatus.SUCCEEDED, status)


@pytest.mark.parametrize("resumable", [JobStatus.FAILED, JobStatus.STOPPED])
def test_failed_and_stopped_jobs_can_be_resumed(resumable: JobStatus) -> None:
    check_transition("j", resumable, JobStatus.PENDING)
    assert resumable.is_terminal()


def test_a_running_job_cannot_go_back_to_pending() -> None:
    with pytest.raises(InvalidTransitionError) as caught:
        check_transition("j", JobStatus.RUNNING, JobStatus.PENDING)
    assert "from RUNNING it can become: FAILED, RECOVERING, STOPPING, SUCCEEDED" in caught.value.message


def test_active_and_terminal_partition_the_statuses() -> None:
    active = {s for s in JobStatus if s.is_active()}
    terminal = {s for s in JobStatus if s.is_terminal()}
    assert active == {JobStatus.PENDING, JobStatus.RUNNING, JobStatus.RECOVERING, JobStatus.STOPPING}
    assert terminal == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    assert active | terminal == set(JobStatus) and not active & terminal  # each status on exactly one side
