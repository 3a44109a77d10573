"""set-lr, stop, snapshots and export through the CLI and the store: what is recorded, and every rejection."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from orchestrator.records import Command
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.unit.test_cli import add_trained_job, invoke


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    store = JobStore(str(tmp_path / "store"))
    add_trained_job(store)  # RUNNING, 3 of 6 epochs done
    return store


def test_set_lr_is_recorded_and_status_shows_it_pending(store: JobStore) -> None:
    code, out, err = invoke("set-lr", "quickstart", "1e-4", "--store", store.url)
    assert code == 0, err
    assert "command #1 set-lr 0.0001 recorded; the job applies it at the next epoch boundary" in out
    [command] = store.read_commands("quickstart")
    assert (command.kind, command.learning_rate, command.when) == ("set_lr", 1e-4, "epoch")
    code, out, _ = invoke("status", "quickstart", "--store", store.url)
    assert "#1 set-lr 0.0001: pending" in out


def test_set_lr_now_and_at_epoch(store: JobStore) -> None:
    assert invoke("set-lr", "quickstart", "0.01", "--now", "--store", store.url)[0] == 0
    assert invoke("set-lr", "quickstart", "0.02", "--at-epoch", "5", "--store", store.url)[0] == 0
    now, later = store.read_commands("quickstart")
    assert (now.when, later.when, later.at_epoch) == ("now", "at_epoch", 5)


@pytest.mark.parametrize("value", ["0", "-1e-3", "inf", "nan", "abc"])
def test_set_lr_refuses_a_learning_rate_that_is_not_positive_and_finite(store: JobStore, value: str) -> None:
    code, _, err = invoke("set-lr", "quickstart", value, "--store", store.url)
    assert code == 2
    assert f"error[usage]: learning rate: got {value!r}" in err or f"learning rate: got {value}," in err
    assert "Traceback" not in err
    assert store.read_commands("quickstart") == []


def test_set_lr_refuses_an_unknown_job(store: JobStore) -> None:
    code, _, err = invoke("set-lr", "quickstar", "1e-3", "--store", store.url)
    assert code == 3 and "no job named 'quickstar'" in err and "did you mean 'quickstart'?" in err


def test_set_lr_refuses_a_finished_job(store: JobStore) -> None:
    store.set_status("quickstart", JobStatus.SUCCEEDED)
    code, _, err = invoke("set-lr", "quickstart", "1e-3", "--store", store.url)
    assert code == 2 and "is SUCCEEDED: it trained to the end" in err


def test_set_lr_refuses_an_epoch_in_the_past_or_beyond_the_end(store: JobStore) -> None:
    code, _, err = invoke("set-lr", "quickstart", "1e-3", "--at-epoch", "2", "--store", store.url)
    assert code == 2 and "--at-epoch: got 2, in the past: job 'quickstart' has done 3 epochs" in err
    code, _, err = invoke("set-lr", "quickstart", "1e-3", "--at-epoch", "6", "--store", store.url)
    assert code == 2 and "trains 6 epochs" in err
    code, _, err = invoke("set-lr", "quickstart", "1e-3", "--at-epoch", "4", "--now", "--store", store.url)
    assert code == 2 and "exclusive" in err
    assert store.read_commands("quickstart") == []


def test_stop_is_recorded_once_and_refused_for_a_job_that_is_not_running(store: JobStore) -> None:
    code, out, _ = invoke("stop", "quickstart", "--store", store.url)
    assert code == 0 and "at the next step boundary" in out
    code, _, err = invoke("stop", "quickstart", "--store", store.url)
    assert code == 2 and "already has a stop pending (command #1)" in err
    store.set_status("quickstart", JobStatus.FAILED)
    code, _, err = invoke("stop", "quickstart", "--at-epoch-end", "--store", store.url)
    assert code == 2 and "is FAILED; only a PENDING, RUNNING or RECOVERING job can be stopped" in err


def _add_commands(url: str, writer: int, count: int) -> None:
    store = JobStore(url)
    for i in range(count):
        store.add_command("quickstart", Command(seq=1, kind="set_lr", learning_rate=writer + i / 1000, when="now"))


@pytest.mark.parametrize("backend", ["file", "memory"])
def test_racing_writers_each_get_their_own_sequence_numbers(tmp_path: Path, backend: str) -> None:
    if backend == "memory":  # one process: fsspec's memory store is per process; threads race instead
        import threading

        store = JobStore("memory://race-store")
        add_trained_job(store)
        threads = [threading.Thread(target=_add_commands, args=(store.url, w, 15)) for w in (1, 2)]
    else:
        store = JobStore(str(tmp_path / "race"))
        add_trained_job(store)
        context = multiprocessing.get_context("spawn")
        threads = [context.Process(target=_add_commands, args=(store.url, w, 15)) for w in (1, 2)]  # type: ignore[misc]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    commands = store.read_commands("quickstart")
    assert [c.seq for c in commands] == list(range(1, 31))
    for writer in (1, 2):  # each writer's commands keep their order
        mine = [c.learning_rate for c in commands if c.learning_rate is not None and int(c.learning_rate) == writer]
        assert mine == sorted(mine) and len(mine) == 15


def test_an_ack_is_written_once(store: JobStore) -> None:
    from orchestrator.records import CommandAck

    assert store.write_ack("quickstart", CommandAck(seq=1, epoch=3, step=0, attempt=1))
    assert not store.write_ack("quickstart", CommandAck(seq=1, epoch=4, step=0, attempt=2))
    assert store.read_acks("quickstart")[1].epoch == 3


def test_snapshots_and_export_explain_what_is_missing(store: JobStore, tmp_path: Path) -> None:
    code, out, _ = invoke("snapshots", "quickstart", "--store", store.url)
    assert code == 0 and "has no snapshot" in out
    code, _, err = invoke("export", "quickstart", str(tmp_path / "m.keras"), "--epoch", "2", "--store", store.url)
    assert code == 2 and "has no snapshot after epoch 2 (its spec has no backup.snapshot_every_epochs)" in err
    code, _, err = invoke("export", "quickstart", str(tmp_path / "m.keras"), "--store", store.url)
    assert code == 2 and "has no final model yet" in err


def test_export_to_an_unwritable_path_is_one_line_not_a_traceback(store: JobStore, tmp_path: Path) -> None:
    source = tmp_path / "final.keras"
    source.write_bytes(b"model bytes")
    store.upload_file("quickstart", str(source), "model", "final.keras")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = invoke("export", "quickstart", str(blocker / "m.keras"), "--store", store.url)
    assert code == 2 and "export path: cannot write" in err and "Traceback" not in err
    code, _, err = invoke("export", "quickstart", str(tmp_path / "out" / "m.keras"), "--store", store.url)
    assert code == 0, err
    assert (tmp_path / "out" / "m.keras").read_bytes() == b"model bytes"


def test_resume_from_an_epoch_without_a_snapshot_is_refused_before_ray_starts(store: JobStore) -> None:
    store.set_status("quickstart", JobStatus.STOPPING)
    store.set_status("quickstart", JobStatus.STOPPED)
    code, _, err = invoke("resume", "quickstart", "--from-epoch", "2", "--store", store.url)
    assert code == 2 and "no snapshot after epoch 2" in err
    code, _, err = invoke("resume", "quickstart", "--lr", "-1", "--store", store.url)
    assert code == 2 and "learning rate: got -1" in err


def test_plot_writes_a_png_of_the_history_and_refuses_an_unknown_metric(store: JobStore, tmp_path: Path) -> None:
    target = tmp_path / "run.png"
    code, out, err = invoke("plot", "quickstart", "-o", str(target), "--store", store.url)
    assert code == 0, err
    assert "wrote" in out and "(3 epochs" in out
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = invoke("plot", "quickstart", "--metric", "f1", "--store", store.url)
    assert code == 2 and "unknown metric 'f1'" in err and "Traceback" not in err


def test_k8s_render_prints_a_rayjob_and_refuses_a_local_store(tmp_path: Path) -> None:
    spec = str(Path(__file__).parents[2] / "jobs" / "quickstart.yaml")
    code, out, err = invoke("k8s", "render", spec, "--store", "gs://bucket/store", "--image", "example/orch:1")
    assert code == 0, err
    assert "kind: RayJob" in out and "kind: ConfigMap" in out and "--or-resume" in out
    code, _, err = invoke("k8s", "render", spec, "--store", str(tmp_path / "local"), "--image", "example/orch:1")
    assert code == 2 and "Traceback" not in err and "gs://" in err


def add_snapshot(store: JobStore, folder: Path, epoch: int = 2) -> str:
    """A snapshot whose manifest matches its files, with its model file."""
    from orchestrator.records import BackupFile, BackupManifest
    from orchestrator.store import file_digest

    state = folder / "state.index"
    state.write_bytes(b"index bytes")
    size, sha256 = file_digest(str(state))
    manifest = BackupManifest(
        name=f"e{epoch:05d}-b0",
        epoch=epoch,
        attempt=1,
        learning_rate=0.1,
        files={"state.index": BackupFile(size=size, sha256=sha256)},
    )
    model = folder / "model.keras"
    model.write_bytes(b"model")
    store.write_snapshot("quickstart", str(folder), manifest, str(model))
    return manifest.name


def test_export_of_a_snapshot_copies_that_snapshots_model_not_the_final_one(store: JobStore, tmp_path: Path) -> None:
    add_snapshot(store, tmp_path)  # its model file holds b"model"
    final = tmp_path / "final.keras"
    final.write_bytes(b"the final model")
    store.upload_file("quickstart", str(final), "model", "final.keras")
    code, out, err = invoke("export", "quickstart", str(tmp_path / "e2.keras"), "--epoch", "2", "--store", store.url)
    assert code == 0, err
    assert "snapshot e00002-b0" in out
    assert (tmp_path / "e2.keras").read_bytes() == b"model"
    code, _, err = invoke("export", "quickstart", str(tmp_path / "last.keras"), "--store", store.url)
    assert code == 0, err
    assert (tmp_path / "last.keras").read_bytes() == b"the final model"


def test_export_of_a_snapshot_without_its_model_file_says_it_is_damaged(store: JobStore, tmp_path: Path) -> None:
    name = add_snapshot(store, tmp_path)
    Path(store.path("quickstart", "snapshots", name, "model.keras")).unlink()
    code, _, err = invoke("export", "quickstart", str(tmp_path / "m.keras"), "--epoch", "2", "--store", store.url)
    assert code == 4 and "Traceback" not in err
    assert (
        "error[corrupt-backup]: job 'quickstart': the snapshot after epoch 2 (e00002-b0) is damaged: model.keras" in err
    )
    assert not (tmp_path / "m.keras").exists()


def test_a_snapshot_or_backup_whose_files_do_not_match_is_shown_damaged_and_never_exported(
    store: JobStore, tmp_path: Path
) -> None:
    name = add_snapshot(store, tmp_path)
    add_snapshot(store, tmp_path, epoch=3)
    Path(store.path("quickstart", "snapshots", name, "state.index")).write_bytes(b"INDEX BYTES")  # same size
    code, out, err = invoke("snapshots", "quickstart", "--store", store.url, "--json")
    assert code == 0, err
    damaged = {row["epoch"]: row["damaged"] for row in json.loads(out)["snapshots"]}
    assert damaged[3] is None and damaged[2].startswith("state.index has sha256 ")
    code, out, _ = invoke("snapshots", "quickstart", "--store", store.url)
    assert "e00002-b0 is damaged (state.index has sha256" in out and "export and resume --from-epoch refuse it" in out
    code, _, err = invoke("export", "quickstart", str(tmp_path / "m.keras"), "--epoch", "2", "--store", store.url)
    assert code == 4 and "is damaged: state.index has sha256" in err and "intact snapshots after epochs: 3" in err
    assert not (tmp_path / "m.keras").exists()
    assert invoke("export", "quickstart", str(tmp_path / "m.keras"), "--epoch", "3", "--store", store.url)[0] == 0

    backup = add_snapshot(store, tmp_path, epoch=4)  # a checkpoint too: copied in place, then cut short
    store.write_backup("quickstart", str(tmp_path), store.read_manifest("quickstart", backup, folder="snapshots"))
    Path(store.path("quickstart", "checkpoints", backup, "state.index")).write_bytes(b"cut")
    code, out, err = invoke("status", "quickstart", "--store", store.url, "--json")
    assert code == 0, err
    assert json.loads(out)["damaged_backups"] == {backup: "state.index has 3 bytes, its manifest says 11"}
    code, out, err = invoke("status", "quickstart", "--store", store.url)
    assert code == 0 and "e00004-b0 (DAMAGED: state.index" in out.replace("\n", " "), err


def test_plot_into_a_folder_that_does_not_exist_is_one_line(store: JobStore, tmp_path: Path) -> None:
    code, _, err = invoke("plot", "quickstart", "-o", str(tmp_path / "missing" / "run.png"), "--store", store.url)
    assert code == 2 and "Traceback" not in err
    assert f"-o/--output: got {tmp_path / 'missing' / 'run.png'}, but the folder {tmp_path / 'missing'} does not" in err
    code, _, err = invoke("compare", "quickstart", "-o", str(tmp_path / "missing" / "c.png"), "--store", store.url)
    assert code == 2 and "-o/--figure: got" in err and "Traceback" not in err
