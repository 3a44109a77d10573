"""Jobs submitted to a Ray cluster through the Jobs API: ``orchestrator up`` starts a head in the background (token
authentication on), a second ``ray start`` node joins it on this host, and every command runs in its own process,
as from separate shells: submit, set-lr, stop, submit --or-resume, cancel, down."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw, write_spec
from tests.history_checks import assert_each_epoch_trained_once
from tests.integration.test_drain import free_port, ray_cli

pytestmark = [pytest.mark.integration]


def cli(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def wait_for(condition: object, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[dict[str, str], str, int]]:
    """``orchestrator up`` (2 CPUs) plus a second node (1 CPU) on this host; yields (env, Jobs API URL, the
    second node's raylet port). ``orchestrator down`` ends both (the second node's processes name the head)."""
    port, dashboard, spot_port = free_port(), free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(ORCHESTRATOR_HOME=str(tmp_path / "home"), ORCHESTRATOR_STORE=str(tmp_path / "store"))
    started = cli("up", "--port", str(port), "--dashboard-port", str(dashboard), "--num-cpus", "2", env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"http://127.0.0.1:{dashboard}" in started.stdout
    again = cli("up", "--port", str(port), "--dashboard-port", str(dashboard), env=env)
    assert again.returncode == 0 and "already running" in again.stdout  # a second `up` reuses the head
    try:
        ray_cli(
            "start",
            f"--address=127.0.0.1:{port}",
            "--num-cpus=1",
            f"--node-manager-port={spot_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            env={**env, "RAY_AUTH_MODE": "token"},
        )
        yield env, f"http://127.0.0.1:{dashboard}", spot_port
    finally:
        down = cli("down", env=env)
        assert down.returncode == 0 and "stopped the local Ray head" in down.stdout, down.stdout + down.stderr
        left = subprocess.run(
            ["pgrep", "-f", f"[:=]{port}( |$)|node_manager_port={spot_port}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        assert not left, f"orchestrator down left processes running: {left}"


def test_a_submitted_job_spans_two_nodes_survives_losing_one_and_obeys_other_shells(
    tmp_path: Path, cluster: tuple[dict[str, str], str, int]
) -> None:
    env, address, spot_port = cluster
    store = JobStore(env["ORCHESTRATOR_STORE"])
    raw = quickstart_raw()
    raw.update(name="submitted", epochs=8, failures={"max_failures": 3})
    raw["scaling"].update(workers=2, cpus_per_worker=1, placement="spread")
    raw["backup"] = {"every_epochs": 1, "every_steps": 16}
    spec = write_spec(tmp_path, raw, "submitted.yaml")

    done = cli("submit", str(spec), "--address", address, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted submitted to " + address in done.stdout and "orchestrator watch submitted" in done.stdout
    assert "submitted" in store.job_names()  # submit returns once the job's driver has recorded it

    def nodes(attempt_logs: str) -> set[str]:
        return set(re.findall(r"rank \d/2 on \S+ \(pid \d+, Ray node (\w+)\)", attempt_logs))

    wait_for(lambda: len(nodes("".join(store.read_logs("submitted").values()))) == 2, "workers on two nodes")
    wait_for(lambda: len(store.read_history("submitted")) >= 1, "the first epoch")
    lr = cli("set-lr", "submitted", "5e-4", env=env)  # another shell, through the store
    assert lr.returncode == 0, lr.stdout + lr.stderr

    # The second node goes away (its raylet killed: no notice); the job resumes on the head alone.
    raylet = subprocess.run(
        ["pgrep", "-f", f"raylet.*--node_manager_port={spot_port}"], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(raylet) == 1
    os.kill(int(raylet[0]), signal.SIGKILL)
    wait_for(lambda: len(store.read_attempts("submitted")) >= 2, "a second attempt")
    second = store.read_attempts("submitted")[1]
    wait_for(lambda: any(r.attempt == 2 for r in store.read_history_lines("submitted")), "an epoch of attempt 2")
    stop = cli("stop", "submitted", env=env)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    wait_for(lambda: store.read_state("submitted").status.is_terminal(), "the stop")
    assert store.read_state("submitted").status is JobStatus.STOPPED
    assert second.restored_from is not None

    # Head loss or a stop: the same submission with --or-resume continues from the store; --follow shows it to
    # its end, one line per epoch here (not a terminal), and exits with its status.
    again = cli("submit", str(spec), "--address", address, "--or-resume", "--follow", env=env, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "submitted submitted to " in again.stdout and "submitted: epoch 8/8 lr 0.0005" in again.stdout
    assert again.stdout.rstrip().endswith("submitted ended SUCCEEDED"), again.stdout
    state = store.read_state("submitted")
    assert state.status is JobStatus.SUCCEEDED, state
    history = assert_each_epoch_trained_once(store, "submitted", 8, 4096 // 64)
    assert history[0].learning_rate == pytest.approx(1e-3) and history[-1].learning_rate == pytest.approx(5e-4)
    assert len(store.read_attempts("submitted")) >= 3

    # No credential in the store: Ray's token never reaches a record or a log.
    token_file = Path.home() / ".ray" / "auth_token"
    token = token_file.read_text().strip()
    assert token
    for path in Path(store.root).rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert token.encode() not in path.read_bytes(), path


def test_cancel_stops_a_job_that_never_started_and_token_problems_are_one_line(
    tmp_path: Path, cluster: tuple[dict[str, str], str, int]
) -> None:
    env, address, _ = cluster
    store = JobStore(env["ORCHESTRATOR_STORE"])
    raw = quickstart_raw()
    raw.update(name="too-big")
    raw["scaling"].update(workers=2, cpus_per_worker=4)  # the cluster has 3 CPUs: it waits to scale up
    spec = write_spec(tmp_path, raw, "too-big.yaml")
    # submit --follow shows the job until it ends; Ctrl+C detaches: the job stays, and watch follows it again.
    follow = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "submit", str(spec), "--address", address, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert follow.stdout is not None
        first = follow.stdout.readline()  # the submission, once the driver recorded the job
        assert first.startswith(f"submitted too-big to {address} as Ray job too-big-"), first
        time.sleep(2.0)  # following: it waits for the job (which waits for CPUs)
        assert follow.poll() is None
        follow.send_signal(signal.SIGINT)
        out, err = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 130, out + err
    assert f"error[interrupted]: detached from job 'too-big': it keeps running on {address}" in err, err
    assert "hint: follow it again: orchestrator watch too-big" in err and "Traceback" not in err
    assert store.read_state("too-big").status.is_active()
    cancelled = cli("cancel", "too-big", "--address", address, env=env)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert "cancelled too-big: Ray job(s) too-big-" in cancelled.stdout
    assert store.read_state("too-big").status is JobStatus.STOPPED

    wrong = cli("submit", str(spec), "--name", "x", "--address", address, env={**env, "RAY_AUTH_TOKEN": "0" * 64})
    assert wrong.returncode == 6 and "rejected the token from $RAY_AUTH_TOKEN" in wrong.stderr, wrong.stderr
    assert "0" * 64 not in wrong.stdout + wrong.stderr
    home = tmp_path / "no-token-home"
    home.mkdir()
    missing = cli("submit", str(spec), "--name", "x", "--address", address, env={**env, "HOME": str(home)})
    assert missing.returncode == 6 and "requires a token, and none was found" in missing.stderr, missing.stderr
    assert "x" not in store.job_names()
