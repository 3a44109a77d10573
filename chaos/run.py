"""One chaos run: a tiny job on a two-node Ray cluster with its store on the GCS emulator, driven through the
seeded plan of faults (``chaos.plan``), then checked (``chaos.checks``). Everything it starts is ended in
``close``, whatever happened."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chaos.cluster import REPO, RayCluster, Store, leftover_processes
from chaos.plan import RESTARTS, Plan, make_plan

JOB = "chaos"
STEPS_PER_EPOCH = 32  # 1024 examples in batches of 32
RECOVERY_TIMEOUT_S = 300.0
POLL_S = 0.1


class ChaosError(AssertionError):
    """The run or one of its checks failed; the message says what, and the seed replays it."""


@dataclass
class Run:
    """What a chaos run did: its plan (with what each fault met), the store and the outcome."""

    seed: int
    plan: Plan
    work: Path
    store_url: str = ""
    epochs: int = 0
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    drivers: list[Path] = field(default_factory=list)  # every driver process's output, in order
    checks: list[str] = field(default_factory=list)  # what was verified, one line each


def job_spec(epochs: int) -> dict[str, Any]:
    """The tiny deterministic job: 2 workers (one per node), 32 steps an epoch, a backup every epoch and every
    second inside epochs (so that uploads are in flight often), restarts without limit."""
    return {
        "name": JOB,
        "seed": 11,
        "deterministic": True,
        "model": {"recipe": "small_cnn", "conv_filters": [8, 16], "dense_units": 32},
        "data": {
            "kind": "synthetic",
            "num_classes": 10,
            "image_shape": [16, 16, 1],
            "train_examples": STEPS_PER_EPOCH * 32,
            "validation_examples": 256,
            "noise": 1.0,
            "max_shift": 2,
        },
        "optimizer": {"name": "adam", "learning_rate": 0.001},
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
        "epochs": epochs,
        "batch_size": 32,
        "scaling": {"workers": 2, "cpus_per_worker": 1, "placement": "spread"},
        "backup": {"every_epochs": 1, "every_seconds": 1, "keep": 3},
        "failures": {"max_failures": 1000},
    }


def epochs_for(faults: int) -> int:
    """Enough training for every fault to land in it under load: runs used about 0.4 epochs a fault (each lands a
    second or two of training after the job trains again; a restart goes back a second at most). On a quiet
    machine the job trains faster than that pace: 13 of 20 faults landed in 17 epochs; give ``--epochs``."""
    return max(4, faults * 2 // 3 + 4)


class Chaos:
    """Runs the plan against one job; ``run`` returns the ``Run`` or raises ``ChaosError``."""

    def __init__(self, work: Path, seed: int, faults: int, kinds: tuple[str, ...] | None = None) -> None:
        self.work = work
        self.run_record = Run(seed=seed, plan=make_plan(seed, faults, kinds), work=work)
        self.store = Store(work)
        self.cluster: RayCluster | None = None
        self.driver: subprocess.Popen[bytes] | None = None
        self.jobs: Any = None  # orchestrator.store.JobStore, imported once the emulator's env is set

    # ------------------------------------------------------------------------------------ set-up and teardown
    def start(self, epochs: int) -> None:
        self.store.start()
        os.environ.update(self.store.env)  # before gcsfs is first imported (bench/gcs.py)
        from orchestrator.store import JobStore

        self.run_record.store_url = self.store.url("store")
        self.jobs = JobStore(self.run_record.store_url)
        self.cluster = RayCluster(self.work / "ray.log", self.store.env)
        self.cluster.add_spot()
        self.run_record.epochs = epochs
        spec = self.work / "chaos.yaml"
        spec.write_text(yaml.safe_dump(job_spec(epochs), sort_keys=False))
        self.start_driver("run", str(spec))

    def close(self) -> None:
        """End the driver, the cluster and the emulator; raise if a process of the cluster outlived it."""
        if self.driver is not None and self.driver.poll() is None:
            self.driver.kill()
            self.driver.wait(timeout=30)
        port = self.cluster.port if self.cluster is not None else None
        if self.cluster is not None:
            self.cluster.close()
        self.store.stop()
        if port is not None:
            deadline = time.monotonic() + 15
            while (left := leftover_processes(port)) and time.monotonic() < deadline:
                time.sleep(0.2)
            if left:
                raise ChaosError(f"processes of the chaos cluster outlived it: {left}")

    def start_driver(self, command: str, target: str) -> None:
        assert self.cluster is not None
        output = self.work / f"driver-{len(self.run_record.drivers) + 1}-{command}.log"
        self.run_record.drivers.append(output)
        argv = [sys.executable, "-m", "orchestrator", command, target, "--store", self.run_record.store_url]
        with output.open("w") as sink:
            self.driver = subprocess.Popen(
                [*argv, "--address", self.cluster.address],
                cwd=REPO,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**self.cluster.env, "COLUMNS": "200"},
            )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """An orchestrator command from another process, as from a second shell."""
        assert self.cluster is not None
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", *args, "--store", self.run_record.store_url],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            cwd=REPO,
            env={**self.cluster.env, "COLUMNS": "200"},
        )

    # ------------------------------------------------------------------------------------ watching the job
    def read(self, what: str, *args: Any) -> Any:
        """A store read that tolerates the store being down (the outage fault): None then."""
        from orchestrator.errors import OrchestratorError

        try:
            return getattr(self.jobs, what)(*args)
        except (OrchestratorError, OSError, FileNotFoundError):
            return None

    def driver_ended(self) -> int | None:
        return None if self.driver is None else self.driver.poll()

    def failed(self, what: str) -> ChaosError:
        tail = self.run_record.drivers[-1].read_text(errors="replace")[-3000:] if self.run_record.drivers else ""
        return ChaosError(f"{what}\n--- last driver output ---\n{tail}")

    def training(self, since: float, attempts_at_least: int) -> bool:
        """The job trains in an attempt numbered ``attempts_at_least`` or later, with a progress report newer
        than ``since`` (a unix time) and every worker of the attempt alive."""
        from orchestrator.lifecycle import process_alive
        from orchestrator.status import JobStatus

        if JOB not in (self.read("job_names") or []):
            return False
        state, progress = self.read("read_state", JOB), self.read("read_progress", JOB)
        if state is None or progress is None or state.status is not JobStatus.RUNNING:
            return False
        attempts = self.read("read_attempts", JOB) or []
        if len(attempts) < max(1, attempts_at_least) or progress.attempt != len(attempts):
            return False
        if progress.updated_at.timestamp() <= since or (progress.step == 0 and progress.epoch == 0):
            return False
        return all(process_alive(w.pid) for w in attempts[-1].workers) and len(attempts[-1].workers) == 2

    def wait_training(self, since: float, attempts_at_least: int) -> bool:
        """Wait until the job trains again; False when its driver ended with exit 0 (the job is done)."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while not self.training(since, attempts_at_least):
            code = self.driver_ended()
            if code == 0:
                return False
            if code is not None:
                raise self.failed(f"the driver exited {code} while the job should have been training")
            if time.monotonic() > deadline:
                raise self.failed(f"the job did not train again within {RECOVERY_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
        return True

    def sleep(self, seconds: float) -> None:
        """Sleep, unless the driver ends meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.driver_ended() is None:
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))

    def position(self) -> str:
        progress = self.read("read_progress", JOB)
        if progress is None:
            return "?"
        return f"epoch {progress.epoch + 1} step {progress.step} (attempt {progress.attempt})"

    def workers(self) -> dict[int, tuple[int, str]]:
        """The current attempt's workers: rank -> (pid, node id prefix)."""
        attempts = self.read("read_attempts", JOB) or []
        return {w.rank: (w.pid, w.node) for w in attempts[-1].workers} if attempts else {}

    # ------------------------------------------------------------------------------------ the plan
    def inject_all(self) -> None:
        from chaos.faults import inject

        since, attempts = 0.0, 1
        for fault in self.run_record.plan.faults:
            if not self.wait_training(since, attempts):
                print(f"  the job finished before fault {fault.describe()}: it and the rest are not injected")
                return
            self.sleep(fault.delay_s)
            if self.driver_ended() is not None:
                continue  # checked again by the next wait
            before = len(self.read("read_attempts", JOB) or [])
            fault.position = self.position()
            fault.injected_at = time.time()
            inject(self, fault)
            print(f"  {time.strftime('%H:%M:%S')} {fault.describe()} at {fault.position}: {fault.note}", flush=True)
            since = time.time()
            attempts = before + 1 if fault.kind in RESTARTS else before

    def finish(self) -> None:
        """Wait for the last driver to end the job."""
        assert self.driver is not None
        try:
            code = self.driver.wait(timeout=1800)
        except subprocess.TimeoutExpired as exc:
            raise self.failed("the job did not end within 30 minutes of the last fault") from exc
        if code != 0:
            raise self.failed(f"the last driver exited {code}, not 0")

    def kill_driver(self) -> int:
        assert self.driver is not None
        pid = self.driver.pid
        os.kill(pid, signal.SIGKILL)
        self.driver.wait(timeout=30)
        return pid


def run_chaos(
    work: Path, seed: int, faults: int, kinds: tuple[str, ...] | None = None, *, epochs: int | None = None
) -> Run:
    """The whole run: set up, the faults, the end of the job, the checks, the teardown. Raises ``ChaosError``."""
    from chaos.checks import check_run

    chaos = Chaos(work, seed, faults, kinds)
    record = chaos.run_record
    saved = {key: os.environ.get(key) for key in chaos.store.env}
    try:
        chaos.start(epochs if epochs is not None else epochs_for(faults))
        chaos.inject_all()
        chaos.finish()
        assert chaos.cluster is not None
        check_run(chaos)
    finally:
        record.seconds = time.time() - record.started
        with contextlib.suppress(Exception):
            (work / "plan.txt").write_text(
                "\n".join(f"{f.describe()} at {f.position}: {f.note}" for f in record.plan.faults)
            )
        try:
            chaos.close()
        finally:
            for key, value in saved.items():  # this process's environment as it was (pytest runs on)
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return record
