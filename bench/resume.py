"""Time to resume, phase by phase, for both contenders after a kill, and the floor it is compared with.

Phases (each from the end of the previous one; seconds):

* ``detection``: the kill, to Ray Train's controller seeing the failure (orchestrator: ``failures.jsonl``;
  baseline: the bench's ``FailureClock`` callback in the same place);
* ``worker start``: to the new rank-0 worker actor's start (Ray's actor table): teardown of the failed
  group and a new one placed and started; for the floor, from ``TensorflowTrainer.fit()``;
* ``import + build``: to the model built (``build_end``): Ray Train's TensorFlow set-up, ``import
  tensorflow``, the strategy, the data, the model;
* ``restore``: to the restored state (orchestrator: compile, pick and verify the newest backup, read it,
  record the attempt: ``attempts.jsonl``'s ``started_at``; baseline: compile, ``fit()`` set-up and
  BackupAndRestore's restore in ``on_train_begin``);
* ``first step``: to the end of the first training step (input stream, callbacks, tracing the step).

The floor is a cold worker start plus the orchestrator's restore measured alone: a fresh ``TensorflowTrainer``
whose workers import TensorFlow, build the model, ``restore_latest`` a backup of the orchestrator's run, and
train one step (``floor_func``), timed from its controller actor's start (a restart has its controller up
already), so its ``worker start`` is placing and starting a worker group, nothing else.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from bench.chaos import Preemption
from bench.contenders import Run
from bench.settings import Job
from bench.timeline import read_processes

PHASES = ("detection", "worker start", "import + build", "restore", "first step")


def actor_starts(class_name: str = "RayTrainWorker") -> dict[int, float]:
    """Start time (unix seconds) of every actor of ``class_name`` this Ray instance ran, by pid."""
    import ray._private.state

    table = ray._private.state.state.actor_table(None)
    return {int(a["Pid"]): a["StartTime"] / 1000 for a in table.values() if a["ActorClassName"] == class_name}


def breakdown(run: Run, kill: Preemption, actors: dict[int, float]) -> dict[str, float] | None:
    """The phases from ``kill`` to the next attempt's first step, or None when the run did not resume."""
    resumed = run.timeline().after(kill.at)
    if resumed is None:
        return None
    failed = _failure_after(run, kill.at)
    actor = actors.get(resumed.pid)
    built = resumed.event("build_end")
    restored = _restored(run, resumed.event("restored"), kill.at)
    if None in (failed, actor, built, restored):
        return None
    marks = [kill.at, failed, actor, built, restored, resumed.steps[0][2]]
    phases = {name: round(b - a, 3) for name, a, b in zip(PHASES, marks, marks[1:], strict=False)}  # type: ignore[operator]
    phases["total"] = round(resumed.steps[0][2] - kill.at, 3)
    return phases


def _failure_after(run: Run, moment: float) -> float | None:
    if run.contender == "baseline":
        return next((t for t in run.failure_times if t >= moment - 0.5), None)
    from orchestrator.store import JobStore

    assert run.store_url is not None and run.name is not None
    failures = JobStore(run.store_url).read_failures(run.name)
    return next((f.failed_at.timestamp() for f in failures if f.failed_at.timestamp() >= moment - 0.5), None)


def _restored(run: Run, event: float | None, moment: float) -> float | None:
    if run.contender == "baseline":
        return event
    from orchestrator.store import JobStore

    assert run.store_url is not None and run.name is not None
    attempts = JobStore(run.store_url).read_attempts(run.name)
    return next((a.started_at.timestamp() for a in attempts if a.started_at.timestamp() > moment), None)


def floor_func(config: dict[str, Any]) -> None:
    """A cold worker: import TensorFlow, build the model, restore the newest backup, train one step."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import ray.train
    import tensorflow as tf
    import tf_keras as keras

    from bench.instrument import StepRecorder, instrument
    from orchestrator.recipes.datasets import synthetic
    from orchestrator.recipes.models import build_model
    from orchestrator.spec import SmallCNNModel, SyntheticData
    from orchestrator.store import JobStore
    from orchestrator.worker.backup import restore_latest
    from orchestrator.worker.pipeline import EpochPlan, distributed_dataset, make_encoder

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    threads = config["threads"]
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if world > 1 else tf.distribute.MirroredStrategy()
    data = synthetic(SyntheticData.model_validate(config["data"]), config["seed"])
    recorder = StepRecorder(config["steps_dir"], rank)
    recorder.event("build_begin")
    with strategy.scope():
        model = build_model(
            SmallCNNModel.model_validate(config["model"]), data.input_shape, data.num_classes, binary=False
        )
        recorder.event("build_end")
        model.compile(
            optimizer=keras.optimizers.Adam(config["learning_rate"]),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        manifest = restore_latest(
            model, JobStore(config["store_url"]), config["job"], rank=rank, log=logging.getLogger("bench.floor")
        )
    recorder.event("restored")
    instrument(model, recorder)
    epoch = manifest.epoch if manifest else 0
    encode = make_encoder(
        images_dtype=data.x_train.dtype,
        num_classes=data.num_classes,
        loss="sparse_categorical_crossentropy",
        resize=None,
    )
    stream = distributed_dataset(
        strategy,
        data.x_train,
        data.y_train,
        global_batch=config["batch_size"],
        seed=config["seed"],
        plan=EpochPlan(epoch, epoch + 1),
        shuffle=True,
        encode=encode,
    )
    model.fit(stream, steps_per_epoch=1, epochs=1, verbose=0)


def measure_floor(work: Path, job: Job, *, store_url: str, name: str) -> dict[str, float]:
    """Phases of one cold start + restore of ``name``'s newest backup (``detection`` is 0: nothing failed)."""
    from ray.train.v2.api.config import RunConfig, ScalingConfig

    from orchestrator.launcher import tensorflow_trainer_class

    TensorflowTrainer = tensorflow_trainer_class()
    folder = work / f"floor-{name}"
    steps_dir = folder / "steps"
    config = {
        "data": job.data,
        "model": job.model,
        "seed": job.seed,
        "batch_size": job.batch_size,
        "learning_rate": job.learning_rate,
        "store_url": store_url,
        "job": name,
        "steps_dir": str(steps_dir),
        "threads": max(1, int(job.cpus_per_worker)),
    }
    called = time.time()
    TensorflowTrainer(
        floor_func,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=job.workers, resources_per_worker={"CPU": job.cpus_per_worker}),
        run_config=RunConfig(name=folder.name, storage_path=str(folder / "ray")),
    ).fit()
    chief = next(p for p in read_processes(steps_dir) if p.rank == 0)
    # From Ray Train's controller being up, as it is when it restarts a failed group: its own start is not a cost
    # a restart pays.
    controller = min(t for t in actor_starts("TrainController").values() if t >= called - 1.0)
    marks = [
        controller,
        controller,
        actor_starts()[chief.pid],
        chief.event("build_end"),
        chief.event("restored"),
        chief.steps[0][2],
    ]
    phases = {name: round(b - a, 3) for name, a, b in zip(PHASES, marks, marks[1:], strict=False)}  # type: ignore[operator]
    phases["total"] = round(chief.steps[0][2] - controller, 3)
    phases["controller start"] = round(controller - called, 3)
    return phases
