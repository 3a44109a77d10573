"""One error hierarchy for everything the orchestrator reports to a user.

Every error carries a one-line message (what was received, what is accepted), an optional hint (the next
command to run) and a stable code. The CLI prints ``error[code]: message`` plus the hint and exits with
``exit_code``; nothing below the CLI prints or exits. Errors are picklable with their fields because some
cross Ray actor boundaries.
"""

from __future__ import annotations

from typing import ClassVar, Literal

STOPPED_EXIT_CODE = 7  # run, resume and watch end with it when the job is STOPPED on request (resumable)

FailureKind = Literal["failure", "preemption", "notice"]
"""How a worker group's end counts (``FailureRecord.kind``): ``notice`` it ended itself after a just-in-time
backup for a notice; ``preemption`` a drained node went (Ray's notice came first); ``failure`` anything else."""


class OrchestratorError(Exception):
    """Base class: a failure the user can act on, reported without a traceback."""

    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = 1
    excerpt: str = ""  # the end of a traceback, for errors that come from code (the user's or a worker's)
    failure_kind: ClassVar[FailureKind] = "failure"  # a worker group that ended with this error, as recorded

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, self.hint, self.__dict__))

    def __str__(self) -> str:
        return self.message


def _rebuild(
    cls: type[OrchestratorError], message: str, hint: str | None, state: dict[str, object]
) -> OrchestratorError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    error.message = message
    error.hint = hint
    return error


class UsageError(OrchestratorError):
    """A command-line argument is wrong (bad LR, bad name, ...)."""

    code = "usage"
    exit_code = 2


class ConfigError(OrchestratorError):
    """The user's config file cannot be read, is not TOML, or has an unknown key or a bad value."""

    code = "config"
    exit_code = 2


class SpecError(OrchestratorError):
    """A job spec could not be read or is invalid; ``problems`` holds one line per problem."""

    code = "spec"
    exit_code = 2

    def __init__(self, source: str, problems: list[str], *, hint: str | None = None) -> None:
        count = len(problems)
        header = f"{source}: {count} problem{'s' if count != 1 else ''}"
        super().__init__(header + "".join(f"\n  {line}" for line in problems), hint=hint)
        self.source = source
        self.problems = problems


class JobNotFoundError(OrchestratorError):
    code = "job-not-found"
    exit_code = 3


class JobExistsError(OrchestratorError):
    code = "job-exists"
    exit_code = 3


class InvalidTransitionError(OrchestratorError):
    """A status change that the job's lifecycle does not allow (e.g. SUCCEEDED -> RUNNING)."""

    code = "invalid-transition"
    exit_code = 3


class StoreError(OrchestratorError):
    """The store URL cannot be reached, read or written."""

    code = "store"
    exit_code = 4


class CorruptBackupError(StoreError):
    """A backup whose files are missing or do not match its manifest (sizes, checksums)."""

    code = "corrupt-backup"


class BackupMismatchError(OrchestratorError):
    """A backup that does not fit the job's model (another architecture): refused, never loaded silently."""

    code = "backup-mismatch"
    exit_code = 5


class UserCodeError(OrchestratorError):
    """The user's own code (a ``model.function`` builder) raised while the job was being set up."""

    code = "user-code"
    exit_code = 1


class DataError(OrchestratorError):
    """The job's data cannot be loaded or does not fit the spec (shapes, labels, loss)."""

    code = "data"
    exit_code = 5


class ClusterError(OrchestratorError):
    """Ray could not be started or reached."""

    code = "cluster"
    exit_code = 6


class InterruptedByUserError(OrchestratorError):
    """The user pressed Ctrl+C while ``orchestrator run`` was driving the job."""

    code = "interrupted"
    exit_code = 130


class TrainingFailedError(OrchestratorError):
    """The job ran and failed; ``excerpt`` is the end of the failing worker's traceback."""

    code = "training-failed"
    exit_code = 1

    def __init__(self, message: str, *, excerpt: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.excerpt = excerpt
