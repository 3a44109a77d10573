"""The job store: every read and write of a job's files goes through here, on any fsspec URL.

Layout under the root URL (all of it, with each file's writer: docs/architecture.md)::

    jobs/<job>/job.json         JobRecord, written once
    jobs/<job>/status.json      JobState (the job's owner, through set_status: orchestrator.lifecycle)
    jobs/<job>/driver.json      DriverRecord (the driving process: its lease)
    jobs/<job>/progress.json    Progress (rank 0)
    jobs/<job>/history.jsonl    EpochRecord per line (rank 0)
    jobs/<job>/workers/rank-N.json
    jobs/<job>/logs/

Writes are atomic: a local file is written beside its target and renamed over it; an object store (gs://,
s3://, memory://) replaces an object in one put. A reader never sees half a file. Appends never lose another
writer's line: O_APPEND on a local folder, one part per process (``<file>.parts/<part>``, read back merged) on
an object store (docs/architecture.md, "Appends").

In layers, each a class the next extends: ``fs`` (the URL, atomic writes, exclusive creates, reading a record
back), ``appends`` (appended files and logs), ``backups`` (backups and snapshots), ``job_store`` (the job's
records: :class:`JobStore`, what everything else uses).

Example::

    store = JobStore("file:///tmp/store")
    store.create_job(record)
    store.set_status("quickstart", JobStatus.RUNNING)
"""

from orchestrator.store.appends import join_pieces
from orchestrator.store.fs import DEFAULT_STORE, STORE_ENV, default_store_url, file_digest, validate_job_name
from orchestrator.store.job_store import JobStore, superseded

__all__ = [
    "DEFAULT_STORE",
    "STORE_ENV",
    "JobStore",
    "default_store_url",
    "file_digest",
    "join_pieces",
    "superseded",
    "validate_job_name",
]
