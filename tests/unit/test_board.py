"""``orchestrator tensorboard``'s parts without a server: the event folders it serves, and the mirror that copies
only new bytes from an object store (on every store kind the suite has: a folder, memory://, gs://)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.board import FOLDER, Mirror, event_folders, tensorboard_command
from orchestrator.cli import app
from orchestrator.errors import JobNotFoundError, UsageError
from orchestrator.spec import JobSpec
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw


def make_job(store: JobStore, name: str) -> None:
    store.create_job(JobSpec.model_validate({**quickstart_raw(), "name": name}))


def put(store: JobStore, job: str, file: str, data: bytes) -> None:
    store.fs.makedirs(store.path(job, FOLDER), exist_ok=True)
    store.fs.pipe_file(store.path(job, FOLDER, file), data)


def test_the_mirror_copies_only_what_each_event_file_grew_by(store_url: str, tmp_path: Path) -> None:
    store = JobStore(store_url)
    make_job(store, "a")
    make_job(store, "b")
    put(store, "a", "events.1", b"x" * 1000)
    put(store, "b", "events.1", b"y" * 10)
    mirror = Mirror(store, ["a", "b"], str(tmp_path / "mirror"))
    assert mirror.sync() == 1010
    assert mirror.sync() == 0  # nothing new: nothing fetched

    put(store, "a", "events.1", b"x" * 1000 + b"z" * 24)  # rank 0 uploaded the grown file whole
    put(store, "a", "events.2", b"w" * 5)  # the next attempt's file
    assert mirror.sync() == 24 + 5
    assert Path(mirror.folder("a"), "events.1").read_bytes() == b"x" * 1000 + b"z" * 24
    assert Path(mirror.folder("a"), "events.2").read_bytes() == b"w" * 5

    put(store, "b", "events.1", b"q" * 4)  # replaced by a shorter file: fetched whole, not appended
    assert mirror.sync() == 4
    assert Path(mirror.folder("b"), "events.1").read_bytes() == b"q" * 4
    assert mirror.fetched_bytes == 1010 + 29 + 4


def test_event_folders_name_a_missing_job_and_one_without_event_files(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    make_job(store, "trained")
    make_job(store, "fresh")
    put(store, "trained", "events.1", b"x")
    assert event_folders(store, ["trained"]) == {"trained": store.path("trained", FOLDER)}
    with pytest.raises(JobNotFoundError, match="no job named 'nope'"):
        event_folders(store, ["trained", "nope"])
    with pytest.raises(UsageError, match="job 'fresh' has no TensorBoard files"):
        event_folders(store, ["fresh"])


def test_tensorboards_command_line_serves_the_mirror_folder() -> None:
    command = tensorboard_command("/tmp/mirror", "localhost", 6007, reload_s=2)
    assert command[1:5] == ["-m", "tensorboard.main", "--logdir", "/tmp/mirror"]
    assert command[-6:] == ["--reload_interval", "2", "--host", "localhost", "--port", "6007"]


def test_the_command_refuses_a_missing_job_and_a_bad_port_in_one_line(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    make_job(store, "trained")
    put(store, "trained", "events.1", b"x")
    runner = CliRunner()
    missing = runner.invoke(app, ["tensorboard", "nope", "--store", store.url], env={"COLUMNS": "200"})
    assert missing.exit_code == 3 and "no job named 'nope'" in missing.output
    assert "Traceback" not in missing.output
    bad_port = runner.invoke(app, ["tensorboard", "trained", "--port", "99999", "--store", store.url])
    assert bad_port.exit_code == 2 and "--port: got 99999" in bad_port.output
    assert not os.path.exists(tmp_path / "store" / "jobs" / "nope")
