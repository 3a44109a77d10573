"""The backup protocol in the store: files first, manifest last; verification on the way back; pruning."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import CorruptBackupError
from orchestrator.records import BackupFile, BackupManifest
from orchestrator.spec import JobSpec
from orchestrator.store import JobStore, file_digest
from tests.conftest import quickstart_raw


@pytest.fixture
def store(store_url: str) -> JobStore:
    store = JobStore(store_url)
    store.create_job(JobSpec.model_validate(quickstart_raw()))
    return store


def backup(store: JobStore, folder: Path, epoch: int, payload: bytes = b"weights") -> BackupManifest:
    source = folder / f"source-{epoch}"
    source.mkdir()
    (source / "state.index").write_bytes(b"index-%d" % epoch)
    (source / "state.data-00000-of-00001").write_bytes(payload * 1000)
    files = {}
    for path in sorted(source.iterdir()):
        size, digest = file_digest(str(path))
        files[path.name] = BackupFile(size=size, sha256=digest)
    manifest = BackupManifest(name=f"e{epoch:05d}-s0000000", epoch=epoch, attempt=1, learning_rate=0.1, files=files)
    store.write_backup("quickstart", str(source), manifest)
    return manifest


def test_a_backup_comes_back_identical_and_verified(store: JobStore, tmp_path: Path) -> None:
    written = backup(store, tmp_path, 3)
    restored = tmp_path / "restored"
    restored.mkdir()
    assert store.fetch_backup("quickstart", written.name, str(restored)) == written
    assert (restored / "state.data-00000-of-00001").read_bytes() == b"weights" * 1000


def test_altered_or_missing_files_are_refused_by_name(store: JobStore, tmp_path: Path) -> None:
    written = backup(store, tmp_path, 3)
    data = store.path("quickstart", "checkpoints", written.name, "state.data-00000-of-00001")
    store.fs.pipe_file(data, b"weightz" * 1000)  # same size, other bytes
    with pytest.raises(CorruptBackupError) as caught:
        store.fetch_backup("quickstart", written.name, str(tmp_path))
    assert "state.data-00000-of-00001 has 7000 bytes, sha256" in caught.value.message
    store.fs.rm_file(data)
    with pytest.raises(CorruptBackupError, match=r"state\.data-00000-of-00001 is missing"):
        store.fetch_backup("quickstart", written.name, str(tmp_path))


def test_a_backup_without_its_manifest_does_not_exist(store: JobStore, tmp_path: Path) -> None:
    backup(store, tmp_path, 1)
    half = backup(store, tmp_path, 2)
    store.fs.rm_file(store.path("quickstart", "checkpoints", half.name, "manifest.json"))  # upload cut short
    assert store.backup_names("quickstart") == ["e00001-s0000000"]


def test_pruning_keeps_the_newest_complete_backups(store: JobStore, tmp_path: Path) -> None:
    for epoch in range(1, 6):
        backup(store, tmp_path, epoch)
    assert store.prune_backups("quickstart", keep=2) == ["e00001-s0000000", "e00002-s0000000", "e00003-s0000000"]
    assert store.backup_names("quickstart") == ["e00004-s0000000", "e00005-s0000000"]
    assert not store.fs.exists(store.path("quickstart", "checkpoints", "e00001-s0000000"))


def test_rank_0_restores_from_the_copy_it_verified_while_choosing(store: JobStore, tmp_path: Path) -> None:
    """Choosing downloads and hashes the newest backup; the restore reads that verified copy instead of
    downloading and hashing it again (seconds for a large model): it still restores after the store's copy of
    the checkpoint is gone."""
    import logging
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tf_keras as keras

    from orchestrator.worker.backup import _choose, restore_backup, save_backup

    def model() -> keras.Model:
        built = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        built.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
        return built

    log = logging.getLogger("test")
    written = model()
    written.fit(np.ones((8, 4)), np.zeros((8, 3)), epochs=1, verbose=0)
    save_backup(written, store, "quickstart", rank=0, epoch=1, step=0, attempt=1, keep=3, log=log, notices=("drain",))
    assert store.read_manifest("quickstart", "e00001-s0000000").notices == ["drain"]
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    assert _choose(store, "quickstart", log, str(fetched)) == "e00001-s0000000"
    assert (fetched / "e00001-s0000000" / "state.index").is_file()
    store.fs.rm(store.path("quickstart", "checkpoints", "e00001-s0000000", "state.index"))  # only the kept copy left

    restored = model()
    manifest = restore_backup(restored, store, "quickstart", "e00001-s0000000", rank=0, log=log, fetched=str(fetched))
    assert manifest.epoch == 1
    for got, want in zip(restored.get_weights(), written.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert int(restored.optimizer.iterations.numpy()) == 1
    # the optimizer's state too (Adam's moments), not a fresh optimizer's: a reset would change every later step
    moments = [v for v in written.optimizer.variables if v.shape.rank]
    assert moments and all(np.any(v.numpy()) for v in moments)
    for got, want in zip(restored.optimizer.variables, written.optimizer.variables, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.name)


def test_a_nodes_own_copy_stands_in_for_the_download_only_where_it_matches_the_manifest(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.worker import backup_cache

    monkeypatch.setenv(backup_cache.CACHE_ENV, str(tmp_path / "cache"))
    written = backup(store, tmp_path, 3)
    copy = tmp_path / "scratch"
    copy.mkdir()
    store.fetch_backup("quickstart", written.name, str(copy))
    assert backup_cache.keep(str(copy), written.name, store.url, "quickstart", rank=1)
    local = backup_cache.lookup(written.name, store.url, "quickstart", rank=1)
    assert local is not None and backup_cache.lookup(written.name, store.url, "quickstart", rank=0) is None

    data = store.path("quickstart", "checkpoints", written.name, "state.data-00000-of-00001")
    store.fs.rm_file(data)  # the store's data file gone: only the node's copy can supply it
    restored = tmp_path / "restored"
    restored.mkdir()
    assert store.fetch_backup("quickstart", written.name, str(restored), local_copy=local) == written
    assert store.last_fetch_local == 2 and (restored / "state.data-00000-of-00001").read_bytes() == b"weights" * 1000

    Path(local, "state.data-00000-of-00001").write_bytes(b"weightz" * 1000)  # a damaged copy is never used
    with pytest.raises(CorruptBackupError, match=r"state\.data-00000-of-00001 is missing"):
        store.fetch_backup("quickstart", written.name, str(restored), local_copy=local)


def test_the_node_keeps_one_backup_per_rank_and_forgets_it_when_the_job_is_trained(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.worker import backup_cache

    monkeypatch.setenv(backup_cache.CACHE_ENV, str(tmp_path / "cache"))
    for name in ("e00001-s0000000", "e00002-s0000000"):
        scratch = tmp_path / name
        scratch.mkdir()
        (scratch / "state.index").write_bytes(name.encode())
        assert backup_cache.keep(str(scratch), name, store.url, "quickstart", rank=0)
    folder = backup_cache.rank_folder(store.url, "quickstart", 0)
    assert [p.name for p in folder.iterdir()] == ["e00002-s0000000"]  # the newest only
    backup_cache.forget(store.url, "quickstart", 0)
    assert not backup_cache.job_folder(store.url, "quickstart").exists()


def test_a_backup_written_in_the_background_holds_the_state_of_its_step_not_of_the_steps_after(
    store: JobStore, tmp_path: Path
) -> None:
    """The step waits only for the host copy; training goes on while the files are written and uploaded, and
    the stored backup (rank 0) and the node's copy (another rank) still hold the variables of the step it was
    taken at."""
    import logging
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tf_keras as keras

    from orchestrator.worker import backup_cache
    from orchestrator.worker.async_writes import wait_for_writes
    from orchestrator.worker.backup import BackupUploader, restore_backup, save_backup

    def model() -> keras.Model:
        built = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512), keras.layers.Dense(3)])
        built.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
        return built

    log = logging.getLogger("test")
    x, y = np.random.default_rng(0).random((64, 64)), np.zeros((64, 3))
    training = model()
    training.fit(x, y, epochs=1, batch_size=16, verbose=0)
    at_backup = [v.numpy().copy() for v in training.variables + training.optimizer.variables]
    uploader = BackupUploader(store, "quickstart", log)
    for rank in (0, 1):
        save_backup(training, store, "quickstart", rank=rank, epoch=1, step=0, attempt=1, keep=3, log=log,
                    uploader=uploader if rank == 0 else None)  # fmt: skip
        training.fit(x, y, epochs=1, batch_size=16, verbose=0)  # the variables move on meanwhile
    uploader.wait()
    wait_for_writes()
    after = [v.numpy() for v in training.variables + training.optimizer.variables]
    assert any(not np.array_equal(a, b) for a, b in zip(after, at_backup, strict=True))
    kept = backup_cache.lookup("e00001-s0000000", store.url, "quickstart", 1)
    assert kept is not None and os.path.isfile(os.path.join(kept, "state.index"))  # rank 1's copy, once written
    restored = model()
    restore_backup(restored, store, "quickstart", "e00001-s0000000", rank=0, log=log)
    for got, want in zip(restored.variables + restored.optimizer.variables, at_backup, strict=True):
        np.testing.assert_array_equal(got.numpy(), want)
    records = store.read_backup_records("quickstart")
    assert records and records[-1].blocking_seconds < 1.0
