"""Submission rules that need no cluster: where the store must be, what is shipped, which address is asked for,
and the one-line errors for an unreachable cluster."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator import local_head, submission
from orchestrator.cli import app
from orchestrator.errors import ClusterError, UsageError
from orchestrator.spec_loader import load_spec
from orchestrator.store import JobStore
from tests.conftest import JOBS, quickstart_raw, write_spec

HERE = {"127.0.0.1", "localhost", "10.0.0.5"}


def test_a_local_store_is_refused_for_a_cluster_with_nodes_elsewhere(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    submission.check_store_reaches_cluster(store, "http://127.0.0.1:8265", {"10.0.0.5"}, HERE)  # all on this host
    with pytest.raises(ClusterError) as error:
        submission.check_store_reaches_cluster(store, "http://127.0.0.1:8265", {"10.0.0.5", "10.0.0.9"}, HERE)
    assert "nodes on 10.0.0.9" in error.value.message and "gs://" in (error.value.hint or "")
    with pytest.raises(ClusterError) as error:
        submission.check_store_reaches_cluster(store, "http://head.example:8265", {"10.0.0.7"}, HERE)
    assert str(tmp_path / "store") in error.value.message
    cloud = JobStore("memory://shared-store")  # not a folder on this machine: fine for any cluster
    submission.check_store_reaches_cluster(cloud, "http://head.example:8265", {"10.0.0.7", "10.0.0.9"}, HERE)


def test_files_the_spec_names_must_be_inside_the_shipped_folder(tmp_path: Path) -> None:
    (tmp_path / "spec" / "models").mkdir(parents=True)
    (tmp_path / "spec" / "models" / "net.py").write_text("def build(shape, classes):\n    return None\n")
    (tmp_path / "outside.py").write_text("def build(shape, classes):\n    return None\n")
    raw = quickstart_raw()
    raw["model"] = {"function": "models/net.py:build"}
    inside = load_spec(write_spec(tmp_path / "spec", raw, "in.yaml"))
    submission.shipped_paths_inside(inside, (tmp_path / "spec").resolve())
    raw["model"] = {"function": "../outside.py:build"}
    outside = load_spec(write_spec(tmp_path / "spec", raw, "out.yaml"))
    with pytest.raises(UsageError) as error:
        submission.shipped_paths_inside(outside, (tmp_path / "spec").resolve())
    assert "model.function" in error.value.message and "outside the spec's folder" in error.value.message


def test_the_entrypoint_reruns_the_spec_with_its_overrides_quoted() -> None:
    line = submission.entrypoint("my job.yaml", "j", "gs://b/s", ["epochs=2", "model.dropout=0.1 "])
    assert shlex.split(line) == [
        "python",
        "-m",
        "orchestrator",
        "run",
        "my job.yaml",
        "--or-resume",
        "--name",
        "j",
        "--store",
        "gs://b/s",
        "--set",
        "epochs=2",
        "--set",
        "model.dropout=0.1 ",
    ]


@pytest.mark.parametrize("address", ["ray://head:10001", "auto", "local"])
def test_submit_asks_for_the_jobs_api_address(address: str) -> None:
    with pytest.raises(UsageError) as error:
        submission.resolve_address(address)
    assert "http://HEAD:8265" in error.value.message


def test_submitting_to_an_unreachable_address_names_it_and_the_next_command(tmp_path: Path) -> None:
    port = local_head.free_port()  # nothing listens there
    result = CliRunner().invoke(
        app,
        [
            "submit",
            str(JOBS / "quickstart.yaml"),
            "--address",
            f"http://127.0.0.1:{port}",
            "--store",
            str(tmp_path / "store"),
        ],
    )
    assert result.exit_code == ClusterError.exit_code, result.output
    assert f"cannot reach the Ray Jobs API at http://127.0.0.1:{port}" in result.output
    assert "orchestrator up" in result.output and "Traceback" not in result.output
    assert "quickstart" not in JobStore(str(tmp_path / "store")).job_names()


def test_down_without_a_head_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(local_head.HOME_ENV, str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["down"])
    assert result.exit_code == 0 and "no local Ray head was running" in result.output


def test_a_base_weights_file_outside_the_shipped_folder_is_refused_too(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "spec").mkdir()
    raw = yaml.safe_load((JOBS / "transfer_learning.yaml").read_text())
    raw["model"]["weights"] = str(tmp_path / "base.h5")
    spec = load_spec(write_spec(tmp_path / "spec", raw, "transfer.yaml"))
    assert ("model.weights", str(tmp_path / "base.h5")) in spec.local_files()
    with pytest.raises(UsageError) as error:
        submission.shipped_paths_inside(spec, (tmp_path / "spec").resolve())
    assert error.value.message.startswith("model.weights:")


def write_head(home: Path, **fields: object) -> None:
    head = {
        "dashboard_url": "http://127.0.0.1:8265",
        "gcs_address": "127.0.0.1:6392",
        "temp_dir": f"/tmp/orchestrator-ray-{os.getuid()}-6392",
        **fields,
    }
    home.mkdir(parents=True, exist_ok=True)
    (home / "head.json").write_text(json.dumps(head))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"temp_dir": ""}, "temp_dir '' is not a folder `orchestrator up` names"),
        ({"temp_dir": "/tmp"}, "temp_dir '/tmp' is not a folder"),
        ({"temp_dir": "/tmp/orchestrator-ray-999999-6392"}, "is not a folder"),  # another user's
        ({"gcs_address": "127.0.0.1:6393"}, "gcs_address '127.0.0.1:6393' does not match temp_dir"),
        ({"gcs_address": ""}, "gcs_address '' does not match"),
        ({"temp_dir": None}, "is damaged"),
    ],
)
def test_down_with_a_head_record_it_cannot_trust_signals_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fields: dict[str, object], problem: str
) -> None:
    monkeypatch.setenv(local_head.HOME_ENV, str(tmp_path / "home"))
    write_head(tmp_path / "home", **fields)
    signalled: list[int] = []
    monkeypatch.setattr(local_head.os, "kill", lambda pid, sig: signalled.append(pid))
    result = CliRunner().invoke(app, ["down"])
    assert result.exit_code == ClusterError.exit_code and problem in result.output, result.output
    assert "signals no process it cannot identify" in result.output
    assert signalled == []
    assert (tmp_path / "home" / "head.json").is_file()  # left for the user to look at


def test_only_processes_naming_the_heads_folder_as_a_whole_path_are_the_heads(tmp_path: Path) -> None:
    folder = f"/tmp/orchestrator-ray-{os.getuid()}-6392"
    head = local_head.HeadRecord(dashboard_url="http://127.0.0.1:8265", gcs_address="127.0.0.1:6392", temp_dir=folder)
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    processes = {
        "the head's": subprocess.Popen([*sleep, f"--temp-dir={folder}"]),
        "the head's, in its folder": subprocess.Popen([*sleep, f"{folder}/session_latest/logs"]),
        "another folder that starts alike": subprocess.Popen([*sleep, f"{folder}0/session_latest"]),
        "another Ray's orphan with the same GCS port": subprocess.Popen([*sleep, "--gcs-address=10.0.0.1:6392"]),
    }
    try:
        time.sleep(0.5)
        found = set(local_head._head_pids(head))
        assert {name for name, process in processes.items() if process.pid in found} == {
            "the head's",
            "the head's, in its folder",
        }
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
