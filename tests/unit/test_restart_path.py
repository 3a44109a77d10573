"""The restart path's shortcuts: Ray Train internals they rely on, the controller's resource wait, the backup
fetched while the strategy starts, and a worker waiting for the chief's TensorFlow server."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.raylet import has_environment, is_training_worker_process
from orchestrator.restart_hooks import ray_train_internals_problem, shortfall
from orchestrator.spec import JobSpec
from orchestrator.store import JobStore
from orchestrator.worker.preload import TRAIN_WORKER_FLAG
from tests.conftest import quickstart_raw
from tests.unit.test_backups import backup


def test_the_ray_train_internals_the_restart_hooks_use_are_all_there() -> None:
    """Fails on a Ray upgrade that moves them: the hooks would then be off (one warning) and restarts slower."""
    assert ray_train_internals_problem() is None


def test_shortfall_names_only_what_is_missing() -> None:
    assert shortfall({"CPU": 2.0, "memory": 1e9}, {"CPU": 2.0}) == {}
    assert shortfall({"CPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}) == {"CPU": 1.0, "GPU": 1.0}
    assert shortfall({}, {}) == {}


@pytest.fixture
def sleepers() -> list[subprocess.Popen[bytes]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started  # type: ignore[misc]
    for process in started:
        process.kill()
        process.wait()


def test_the_synchronisation_actors_process_is_told_from_a_training_workers_by_its_environment(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    def sleeper(**variables: str) -> int:
        command = [sys.executable, "-c", "import time; time.sleep(60)"]
        process = subprocess.Popen(command, env={**os.environ, **variables})
        sleepers.append(process)
        return process.pid

    controllers = sleeper(JOB_MARK="a")
    trainers = sleeper(JOB_MARK="a", **{TRAIN_WORKER_FLAG: "1"})
    other = sleeper(JOB_MARK="b")
    assert has_environment(controllers, {"JOB_MARK": "a"})
    assert not has_environment(trainers, {"JOB_MARK": "a"})  # a training worker's process: not for the actor
    assert not has_environment(other, {"JOB_MARK": "a"})
    assert is_training_worker_process(trainers) and not is_training_worker_process(controllers)
    assert not has_environment(2**22 + 1, {})  # no such process


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    store = JobStore(str(tmp_path / "store"))
    store.create_job(JobSpec.model_validate(quickstart_raw()))
    return store


def test_every_rank_prefetches_the_newest_good_backup_into_its_folder(store: JobStore, tmp_path: Path) -> None:
    from orchestrator.worker.backup import BackupPrefetch

    backup(store, tmp_path, 1, b"one")
    backup(store, tmp_path, 2, b"two")
    damaged = backup(store, tmp_path, 3, b"three")
    store.fs.rm_file(store.path("quickstart", "checkpoints", damaged.name, "state.index"))
    for rank in (0, 1):
        keep_in = tmp_path / f"kept-{rank}"
        prefetch = BackupPrefetch(store, "quickstart", rank=rank, log=logging.getLogger("test"), keep_in=str(keep_in))
        prefetch.wait()
        assert sorted(p.name for p in keep_in.iterdir()) == ["e00002-s0000000"]  # the damaged newest is gone
        assert (keep_in / "e00002-s0000000" / "state.data-00000-of-00001").read_bytes() == b"two" * 1000


def test_of_several_good_backups_the_newest_is_the_one_restored(store: JobStore, tmp_path: Path) -> None:
    """An older one would train the epochs after it a second time (each once per attempt, so only the choice
    itself shows it)."""
    from orchestrator.worker.backup import BackupPrefetch

    for epoch in (1, 2, 3):
        backup(store, tmp_path, epoch, b"%d" % epoch)
    keep_in = tmp_path / "kept"
    BackupPrefetch(store, "quickstart", rank=0, log=logging.getLogger("test"), keep_in=str(keep_in)).wait()
    assert sorted(p.name for p in keep_in.iterdir()) == ["e00003-s0000000"]


def test_only_rank_0_warns_about_a_backup_it_passes_over(
    store: JobStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from orchestrator.worker.backup import BackupPrefetch

    backup(store, tmp_path, 1)
    damaged = backup(store, tmp_path, 2)
    store.fs.rm_file(store.path("quickstart", "checkpoints", damaged.name, "state.index"))
    with caplog.at_level(logging.INFO):
        for rank in (1, 0):
            BackupPrefetch(store, "quickstart", rank=rank, log=logging.getLogger(f"rank{rank}"), keep_in=None).wait()
    warnings = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert [name for name, _ in warnings] == ["rank0"]
    assert warnings[0][1].startswith(f"skipping backup {damaged.name}: ")
    assert "state.index is missing" in warnings[0][1] and warnings[0][1].endswith("trying an older one")


def test_rank_0s_prefetch_error_reaches_the_training_thread(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.worker.backup import BackupPrefetch

    def unreachable(job: str) -> list[str]:
        raise ConnectionError("the store did not answer")

    monkeypatch.setattr(store, "backup_names", unreachable)
    prefetch = BackupPrefetch(store, "quickstart", rank=0, log=logging.getLogger("test"), keep_in=None)
    with pytest.raises(ConnectionError, match="the store did not answer"):
        prefetch.agreed()


def test_a_worker_finds_the_chiefs_address_in_tf_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.worker.startup import chief_address as _chief_address

    cluster = '{"cluster": {"worker": ["10.0.0.5:4321", "10.0.0.6:4322"]}, "task": {"type": "worker", "index": 1}}'
    monkeypatch.setenv("TF_CONFIG", cluster)
    assert _chief_address() == "10.0.0.5:4321"
    for unusable in ("", "not json", '{"cluster": {}}', '{"cluster": {"worker": ["nohost"]}}'):
        monkeypatch.setenv("TF_CONFIG", unusable)
        assert _chief_address() is None
    monkeypatch.delenv("TF_CONFIG")
    assert _chief_address() is None


def test_a_worker_waits_for_the_chiefs_server_to_listen_and_no_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.worker import startup

    with socket.socket() as probe:  # a free port, not yet listened on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("TF_CONFIG", f'{{"cluster": {{"worker": ["127.0.0.1:{port}", "127.0.0.1:1"]}}}}')
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def listen_later() -> None:
        time.sleep(0.5)
        server.bind(("127.0.0.1", port))
        server.listen()

    later = threading.Thread(target=listen_later)
    started = time.monotonic()
    later.start()
    try:
        startup.wait_for_chief(logging.getLogger("test"))
        waited = time.monotonic() - started
    finally:
        later.join()
        server.close()
    assert 0.5 <= waited < startup.CHIEF_WAIT_S

    monkeypatch.setattr(startup, "CHIEF_WAIT_S", 0.3)  # nobody listens: the strategy starts anyway, logged
    started = time.monotonic()
    startup.wait_for_chief(logging.getLogger("test"))
    assert 0.3 <= time.monotonic() - started < 2
