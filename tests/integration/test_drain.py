"""A spot node reclaimed with notice: two Ray nodes on this host, the worker node drained with reason PREEMPTION
and a deadline, then killed: either right after the just-in-time backup (a node that goes sooner than announced)
or at its deadline, when the workers have trained through the notice period and backed up once more just before
it. The job resumes from its last backup, counted as a preemption, on the remaining node (docs/architecture.md,
"Token authentication" and "Node drains on one host": a second node joins with RAY_AUTH_MODE=token)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
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

pytestmark = [pytest.mark.integration]

DEADLINE_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ray_cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(["ray", *args], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, f"ray {' '.join(args)}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
    return done.stdout


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[str, str, int, dict[str, str]]]:
    """A head node (2 CPUs) and a 'spot' worker node (1 CPU) on this host; yields (address, spot node id,
    spot raylet port, env)."""
    port, spot_port = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": ""}
    ray_cli("start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", env=env)
    address = f"127.0.0.1:{port}"
    try:
        ray_cli(
            "start",
            f"--address={address}",
            "--num-cpus=1",
            '--resources={"spot": 1}',
            f"--node-manager-port={spot_port}",
            env=env,
        )
        probe = (
            "import json, ray; ray.init(address='" + address + "', logging_level='ERROR'); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] and n['Resources'].get('spot')]))"
        )
        found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
        spot = json.loads(found.stdout.strip().splitlines()[-1]) if found.returncode == 0 else []
        assert len(spot) == 1, found.stdout[-1000:] + found.stderr[-2000:]
        yield address, spot[0], spot_port, env
    finally:
        stop_cluster(port)


def stop_cluster(port: int) -> None:
    """SIGKILL every process of the cluster whose GCS listens on ``port``, and no other (`ray stop` would also end
    the Ray the other tests share): its raylets with what each started (workers, agents: they carry no address in
    their titles, and outlive a killed raylet), then its GCS and the head's other processes."""

    def pids(pattern: str) -> list[int]:
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
        return [int(pid) for pid in found.stdout.split()]

    raylets = pids(rf"raylet .*--gcs-address=[0-9.]+:{port}( |$)")
    victims = [child for raylet in raylets for child in pids_of_children(raylet)] + raylets
    victims += pids(rf"[:=]{port}( |$)")
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def pids_of_children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(child) for child in found.stdout.split()]


def spot_raylet_pid(port: int) -> int:
    found = subprocess.run(["pgrep", "-f", f"raylet.*--node_manager_port={port}"], capture_output=True, text=True)
    pids = [int(p) for p in found.stdout.split()]
    assert len(pids) == 1, found.stdout
    return pids[0]


@pytest.mark.parametrize("goes", ["after_the_backup", "at_the_deadline"])
def test_a_drained_spot_node_gets_a_just_in_time_backup_and_the_job_resumes(
    tmp_path: Path, two_nodes: tuple[str, str, int, dict[str, str]], goes: str
) -> None:
    address, spot_node, spot_port, env = two_nodes
    epochs = 6 if goes == "after_the_backup" else 12  # training left after the deadline
    deadline_s = DEADLINE_S if goes == "after_the_backup" else 20
    raw = quickstart_raw()
    raw.update(name="drained", epochs=epochs)
    raw["data"].update(train_examples=8192, validation_examples=512)  # 128 steps an epoch: time to drain
    raw["scaling"] = {"workers": 2, "cpus_per_worker": 1, "placement": "spread"}  # one worker on each node
    raw["failures"] = {"max_failures": 1}
    spec = write_spec(tmp_path, raw, "drained.yaml")
    store = JobStore(str(tmp_path / "store"))
    output = tmp_path / "run.log"
    with output.open("w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "run",
                str(spec),
                "--store",
                store.url,
                "--address",
                address,
                "--json",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 300
        while len(store.read_history("drained") if "drained" in store.job_names() else []) < 1:
            assert process.poll() is None, output.read_text()[-3000:]
            assert time.monotonic() < deadline, "no epoch finished"
            time.sleep(0.2)
        hosts = re.findall(r"rank (\d)/2 on \S+ \(pid (\d+)", "".join(store.read_logs("drained").values()))
        assert len(hosts) == 2, hosts
        drained_at = time.time()
        ray_cli(
            "drain-node",
            f"--address={address}",
            f"--node-id={spot_node}",
            "--reason=DRAIN_NODE_REASON_PREEMPTION",
            "--reason-message=spot reclaim (test)",
            f"--deadline-remaining-seconds={deadline_s}",
            env=env,
        )
        while "just-in-time" not in store.read_logs("drained").get("worker-0.log", ""):
            assert process.poll() is None and time.time() < drained_at + deadline_s, "no just-in-time backup in time"
            time.sleep(0.2)
        backed_up_at = time.time()
        on_spot = re.search(r"preempted_node_to_ranks=\{'\w+': \[(\d)\]\}", store.read_logs("drained")["worker-0.log"])
        assert on_spot, "the drain notice names the rank on the drained node"
        worker = dict(hosts)[on_spot.group(1)]  # the reclaim itself: the node's raylet and its worker go at once
        if goes == "at_the_deadline":
            while "training pauses" not in store.read_logs("drained").get("worker-0.log", ""):
                assert process.poll() is None and time.time() < drained_at + deadline_s, "no last backup in time"
                time.sleep(0.2)
            paused_at = time.time()
            time.sleep(max(0.0, drained_at + deadline_s - time.time()))
        os.kill(spot_raylet_pid(spot_port), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(worker), signal.SIGKILL)
        process.wait(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output.read_text()[-3000:]
    assert backed_up_at - drained_at < deadline_s
    assert store.read_state("drained").status is JobStatus.SUCCEEDED
    attempts = store.read_attempts("drained")
    assert len(attempts) == 2 and attempts[1].restored_from is not None
    log = store.read_logs("drained")["worker-0.log"]
    jit = re.search(r"backup (e\d+-s\d+) taken .*\(just-in-time: a node of the group is being drained", log)
    assert jit, log[-3000:]
    if goes == "after_the_backup":  # the just-in-time backup, unless an epoch ended before the reclaim: then that
        # epoch's backup, the newest stored; never an older one, nor one the reclaim cut short
        later = [r for r in store.read_backup_records("drained") if r.attempt == 1 and r.name > jit.group(1)]
        assert all(r.step == 0 for r in later), [r.name for r in later]
        assert attempts[1].restored_from == (later[-1].name if later else jit.group(1))
    else:  # trained on through the notice period, backed up just before its deadline, and lost no step then
        assert drained_at + deadline_s - 10 < paused_at < drained_at + deadline_s
        last = re.search(r"backup (e\d+-s\d+) taken .*\(last backup before the deadline \(", log)
        assert last, log[-3000:]
        assert last.group(1) > jit.group(1)
        assert attempts[1].restored_from == last.group(1)
        assert re.search(r"training pauses at epoch \d+, step \d+ until the drained node goes", log)
    assert_each_epoch_trained_once(store, "drained", epochs, 8192 // 64)
    failures = store.read_failures("drained")  # Ray's controller may report one failure more than once
    assert failures and all(f.kind == "preemption" for f in failures)
    from orchestrator.recovery import run_accounting

    accounting = run_accounting(
        attempts,
        failures,
        store.read_history("drained"),
        store.read_history_lines("drained"),
        store.read_state("drained").ended_at,
    )
    assert accounting.preemptions == 1 and accounting.restarts == 1
    if goes == "at_the_deadline":  # the workers paused after the last backup: nothing trained was lost
        assert accounting.lost_steps == 0
        assert any(r.startswith("rank 0: paused at epoch") for f in failures for r in f.reasons), failures
