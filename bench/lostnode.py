"""A lost node: two Ray nodes on this host, the worker node's raylet killed mid-run, a replacement node started
``replace_after_s`` later (``bench.settings``; a spot VM's replacement takes minutes on a real cluster).

Each contender runs its job on its own fresh two-node cluster (a head and a worker node, 1 CPU each, started
with ``ray start``), driven from a separate process, since a process can be attached to one Ray instance only
and the bench's own is the embedded one:

* the orchestrator: ``orchestrator run <spec> --address <cluster>`` with ``scaling.min_workers: 1``: it goes on
  with the one worker the head can hold, and grows back to two when the replacement joins;
* the baseline: ``bench.baseline.run_baseline`` (Ray Train with a fixed ``num_workers=2``) in a child process
  (``python -m bench.lostnode baseline <config>``): it waits for the second node, then resumes from its last
  epoch backup.

Both are measured from their step files (``bench.instrument``): the loss to the next training step, the node's
return to the first step at full size, and useful progress: the samples that count toward the final model
(each global step's last execution, ``bench.timeline``) per second of wall time, from the first step to the
last.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.contenders import Run, orchestrator_spec
from bench.gcs import free_port
from bench.settings import Job
from bench.timeline import Timeline, read_processes

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120.0


class Cluster:
    """A head node and worker nodes (1 CPU each) on this host, started with ``ray start``; ``close`` ends every
    process of this cluster and no other (``ray stop`` would also end the bench's own Ray)."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = log
        # the bench's modules must import in every worker process (the baseline's train function is pickled by
        # reference to bench.baseline)
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": "", "PYTHONPATH": path}
        self._ray("start", "--head", f"--port={self.port}", "--num-cpus=1", "--include-dashboard=false")
        self.node_ports: list[int] = []

    def _ray(self, *args: str) -> None:
        with self.log.open("a") as sink:
            done = subprocess.run(
                ["ray", *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=self.env,
                timeout=START_TIMEOUT_S,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed (exit {done.returncode}): see {self.log}")

    def add_node(self) -> int:
        """A worker node with 1 CPU; returns its raylet's port. On a loaded machine ``ray start`` can time out
        waiting for its raylet: what it left is ended and it is tried again, up to three times."""
        for attempt in range(3):
            port = free_port()
            try:
                self._ray("start", f"--address={self.address}", "--num-cpus=1", f"--node-manager-port={port}")
            except RuntimeError:
                for pid in _pids(f"raylet.*--node_manager_port={port}"):
                    _kill_tree(pid)
                if attempt == 2:
                    raise
                continue
            self.node_ports.append(port)
            return port
        raise AssertionError("unreachable")

    def lose_node(self, port: int) -> None:
        """SIGKILL the node's raylet and every process it started (its workers, its agents), as when a spot VM is
        reclaimed without notice."""
        found = subprocess.run(
            ["pgrep", "-f", f"raylet.*--node_manager_port={port}"], capture_output=True, text=True, check=False
        )
        pids = [int(p) for p in found.stdout.split()]
        if len(pids) != 1:
            raise RuntimeError(f"expected one raylet on port {port}, found {pids}")
        _kill_tree(pids[0])

    def close(self) -> None:
        """End every process of this cluster: its raylets with what they started, then its GCS and the rest."""
        raylets = _pids(rf"raylet .*--gcs-address=[0-9.]+:{self.port}\b")
        for pid in raylets:
            _kill_tree(pid)
        for pid in _pids(rf"(gcs-address=|gcs_address=|address=)[0-9.]+:{self.port}\b|gcs_server_port={self.port}\b"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _pids(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its children (a raylet's workers and agents would otherwise live on as orphans)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    for victim in [pid, *(int(c) for c in children.stdout.split())]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def run_lost_node(
    work: Path, contender: str, round_index: int, job: Job, *, lose_after_s: float, replace_after_s: float
) -> Run:
    """One job of ``contender`` on a fresh two-node cluster: its worker node is lost after ``lose_after_s`` of
    training (once a backup exists) and replaced ``replace_after_s`` later. The moments are in ``run.marks``:
    ``lost`` (the raylet killed) and ``joined`` (the replacement's ``ray start`` returned)."""
    name = f"lostnode-{contender}-r{round_index}"
    folder = work / name
    folder.mkdir(parents=True)
    # the baseline's steps go to <run_dir>/<variant>/steps (bench.baseline)
    steps_dir = folder / "steps" if contender == "orchestrator" else folder / "baseline" / "epoch" / "steps"
    run = Run(contender, "lostnode", round_index, job, steps_dir, time.time(), name=name)
    cluster: Cluster | None = None
    process: subprocess.Popen[bytes] | None = None
    log = folder / "job.log"
    try:
        cluster = Cluster(folder / "ray.log")
        spot = cluster.add_node()
        command = _command(contender, folder, name, job, cluster.address, steps_dir, run)
        with log.open("w") as sink:
            process = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=cluster.env)
        first = _wait(lambda: _first_step(steps_dir), process, "the first step")
        ready = _backup_exists(contender, folder, run)
        _wait(lambda: time.time() - first >= lose_after_s and ready(), process, "the moment to lose the node")
        cluster.lose_node(spot)
        run.marks["lost"] = time.time()
        print(f"    {contender}: worker node lost", flush=True)
        if _sleep_or_end(process, replace_after_s):
            cluster.add_node()
            run.marks["joined"] = time.time()
            print(f"    {contender}: replacement node joined", flush=True)
        code = process.wait(timeout=3600)
        if code != 0:
            raise RuntimeError(f"the job exited {code}: {log.read_text(errors='replace')[-2000:]}")
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        run.seconds = time.time() - run.started
        if process is not None and process.poll() is None:
            process.kill()
        if cluster is not None:
            cluster.close()
    return run


def _command(contender: str, folder: Path, name: str, job: Job, address: str, steps_dir: Path, run: Run) -> list[str]:
    if contender == "orchestrator":
        raw = orchestrator_spec(job, name, steps_dir, {"every_epochs": 1, "keep": 3})
        raw["scaling"].update(placement="spread", min_workers=1)
        spec = folder / "job.yaml"
        spec.write_text(yaml.safe_dump(raw, sort_keys=False))
        run.store_url = str(folder / "store")
        return [sys.executable, "-m", "orchestrator", "run", str(spec), "--store", run.store_url, "--address", address]
    config = {
        "address": address,
        "run_dir": str(folder / "baseline"),
        "workers": job.workers,
        "cpus_per_worker": job.cpus_per_worker,
        "settings": job.baseline_settings(),
    }
    return [sys.executable, "-m", "bench.lostnode", "baseline", json.dumps(config)]


def _backup_exists(contender: str, folder: Path, run: Run) -> Any:
    """Nothing is lost before the first backup exists (as in the kill schedule: ``bench.chaos``)."""
    if contender == "orchestrator":
        from orchestrator.store import JobStore

        assert run.store_url is not None and run.name is not None
        store, name = JobStore(run.store_url), run.name
        return lambda: name in store.job_names() and bool(store.backup_names(name))
    return lambda: any((folder / "baseline").rglob("checkpoint"))


def _first_step(steps_dir: Path) -> float | None:
    starts = [p.steps[0][1] for p in read_processes(steps_dir) if p.steps] if steps_dir.exists() else []
    return min(starts) if starts else None


def _wait(condition: Any, process: subprocess.Popen[bytes], what: str, timeout: float = 1800) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if process.poll() is not None:
            raise RuntimeError(f"the job ended (exit {process.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come within {timeout:.0f} s")
        time.sleep(0.1)
    return value


def _sleep_or_end(process: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait ``seconds``; False if the job ended meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        time.sleep(0.1)
    return True


@dataclass(frozen=True)
class Outcome:
    """What one lost-node run shows, from its step files."""

    training_again_s: float | None  # the loss -> the first step after it
    full_size_s: float | None  # the replacement's join -> the first step with two workers after it
    useful_samples_per_s: float  # counted samples / wall seconds, first step to last
    steady_samples_per_s: float  # two workers before the loss (from the second epoch on)


def outcome(run: Run) -> Outcome:
    lost, joined = run.marks["lost"], run.marks.get("joined")
    processes = [p for p in read_processes(run.steps_dir) if p.steps]
    timeline = Timeline.read(run.steps_dir, steps_per_epoch=run.job.steps_per_epoch, global_batch=run.job.batch_size)
    after = [p.steps[0][1] for p in processes if p.rank == 0 and p.steps[0][1] > lost]
    # full size: a rank-1 process (there is one only in a group of two) stepping after the replacement joined
    grown = [p.steps[0][1] for p in processes if p.rank == 1 and joined is not None and p.steps[0][1] > joined]
    counted = timeline.counted()
    first = min(p.steps[0][1] for p in processes)
    wall = max(end for _, end in counted.values()) - first
    before = [s for s in timeline.attempts[0].steps[run.job.steps_per_epoch :] if s[2] < lost]
    steady = len(before) * run.job.batch_size / (before[-1][2] - before[0][1]) if len(before) > 1 else float("nan")
    return Outcome(
        training_again_s=min(after) - lost if after else None,
        full_size_s=min(grown) - joined if grown and joined is not None else None,
        useful_samples_per_s=len(counted) * run.job.batch_size / wall,
        steady_samples_per_s=steady,
    )


def _baseline_child(config: dict[str, Any]) -> None:
    """The baseline's driver, attached to the two-node cluster."""
    import ray

    from bench import baseline

    ray.init(address=config["address"], logging_level=logging.ERROR, log_to_driver=False)
    baseline.run_baseline(
        Path(config["run_dir"]),
        workers=config["workers"],
        cpus_per_worker=config["cpus_per_worker"],
        variants=["epoch"],
        settings=config["settings"],
        max_failures=10,
    )


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "baseline":
        sys.exit("usage: python -m bench.lostnode baseline <config JSON>")
    _baseline_child(json.loads(sys.argv[2]))
