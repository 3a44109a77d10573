"""A job's lifecycle: the statuses and the only transitions between them."""

from __future__ import annotations

from enum import StrEnum

from orchestrator.errors import InvalidTransitionError


class JobStatus(StrEnum):
    PENDING = "PENDING"  # recorded in the store; no worker has trained yet in this attempt
    RUNNING = "RUNNING"  # workers are training
    RECOVERING = "RECOVERING"  # a worker group was lost; a new attempt is starting from the latest backup
    STOPPING = "STOPPING"  # a stop was requested; workers finish a backup, then exit
    STOPPED = "STOPPED"  # stopped on request; `orchestrator resume` continues it
    SUCCEEDED = "SUCCEEDED"  # trained every epoch (or stopped early by its own rule, e.g. early stopping)
    FAILED = "FAILED"  # ended by an error: user code, data, infrastructure, or a failure budget spent

    def is_terminal(self) -> bool:
        """True when nothing will change the job again without a user's `resume`."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)

    def is_active(self) -> bool:
        """True while a driver owns the job (it may train, recover or stop)."""
        return not self.is_terminal()


ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.STOPPED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.RECOVERING, JobStatus.STOPPING, JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.RECOVERING: frozenset({JobStatus.RUNNING, JobStatus.STOPPING, JobStatus.FAILED}),
    JobStatus.STOPPING: frozenset({JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.STOPPED: frozenset({JobStatus.PENDING}),
    JobStatus.FAILED: frozenset({JobStatus.PENDING}),
    JobStatus.SUCCEEDED: frozenset({JobStatus.PENDING}),  # only `resume --from-epoch N` reopens a finished job
}


def check_transition(job: str, current: JobStatus, new: JobStatus) -> None:
    """Raise unless ``current -> new`` is allowed; staying in the same status is always allowed."""
    if new != current and new not in ALLOWED_TRANSITIONS[current]:
        allowed = ", ".join(sorted(ALLOWED_TRANSITIONS[current])) or "nothing (final)"
        raise InvalidTransitionError(
            f"job '{job}' is {current}; it cannot become {new} (from {current} it can become: {allowed})",
            hint=f"see: orchestrator status {job}",
        )
