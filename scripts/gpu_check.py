"""Check the multi-replica, mixed-precision path where the GPUs are (not a CI test; see docs/gpu.md).

Runs a short job with ``gpus_per_worker`` = the GPUs this machine has and ``precision: mixed_float16`` twice on
an embedded local Ray: once uninterrupted, once with its worker SIGKILLed after its second backup (Ray Train
restarts it from the backup). Then prints what it verified: the replicas in sync, the dynamic loss scale restored
(the final backups of both runs hold the same scale and good steps), the final weights equal, and the product's
samples/s against a plain ``model.fit`` of the same model, data and precision on the same devices.

Without a GPU it runs on the CPU split into ``--cpu-replicas`` logical devices (``cpu_replicas_per_worker``), so
that it can be tried anywhere (slowly: float16 on a CPU is emulated).

    PYTHONPATH=. python scripts/gpu_check.py                       # every GPU, mixed_float16
    PYTHONPATH=. python scripts/gpu_check.py --examples 2048 --epochs 2   # a tiny run on CPU

Exit status 0 when everything it checks holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf
import yaml


def main() -> int:
    args = _arguments()
    gpus = len(tf.config.list_physical_devices("GPU"))
    raw = _spec(args, gpus)
    replicas = raw["scaling"]["gpus_per_worker"] or raw["scaling"]["cpu_replicas_per_worker"]
    where = f"{gpus} GPU(s)" if gpus else f"no GPU: the CPU split into {replicas} logical devices"
    print(f"gpu_check: {where}, 1 worker x {replicas} replicas, precision {args.precision}, batch {args.batch}")
    baseline = _plain_fit(raw, gpus, replicas)  # first: it splits the CPU before TensorFlow's devices start

    from orchestrator.runner import run_job
    from orchestrator.status import JobStatus
    from orchestrator.store import JobStore

    folder = Path(args.store or tempfile.mkdtemp(prefix="gpu-check-"))
    store = JobStore(str(folder / "store"))
    checks: list[tuple[str, bool, str]] = []
    reference = run_job(_write(folder, raw, "reference"), store=store)
    checks.append(("uninterrupted run succeeded", reference.status is JobStatus.SUCCEEDED, reference.status.value))
    killed_at = _run_and_kill(folder, raw, store)
    checks.append(("killed run resumed and succeeded", killed_at is not None, killed_at or "no kill"))
    attempts = store.read_attempts("killed")
    checks.append(
        (
            "replicas in sync",
            all(a.replicas == replicas for a in attempts) and len(attempts) == 2,
            f"attempts {[a.replicas for a in attempts]}, want {replicas} each, 2 attempts",
        )
    )
    want, got = _final_loss_scale(store, "reference"), _final_loss_scale(store, "killed")
    restored = "good steps since it last changed (restored from the backup)" in store.read_logs("killed").get(
        "worker-0.log", ""
    )
    checks.append(
        ("loss scale restored", restored and want == got and want is not None, f"reference {want}, resumed {got}")
    )
    a, b = final_model(store, "reference").get_weights(), final_model(store, "killed").get_weights()
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))
    equal = all(np.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(a, b, strict=True))
    checks.append(("final weights equal", equal, f"largest difference {worst:.3g}"))
    product = _samples_per_second(store, "reference", raw)
    print()
    for what, ok, detail in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {what}: {detail}")
    print(f"  samples/s: orchestrator {product:.1f}, plain model.fit {baseline:.1f} ({product / baseline:.0%})")
    print(f"  store: {folder / 'store'}")
    return 0 if all(ok for _, ok, _ in checks) else 1


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="mixed_float16", choices=["float32", "mixed_float16", "mixed_bfloat16"])
    parser.add_argument("--cpu-replicas", type=int, default=2, help="replicas on a machine without a GPU")
    parser.add_argument("--examples", type=int, default=16384, help="training examples (synthetic)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--store", help="folder for the store (default: a new temporary one)")
    return parser.parse_args()


def _spec(args: argparse.Namespace, gpus: int) -> dict[str, Any]:
    replicas = gpus or args.cpu_replicas
    batch = max(args.batch // replicas, 1) * replicas
    steps = args.examples // batch
    return {
        "name": "reference",
        "seed": 7,
        "model": {"recipe": "small_cnn", "conv_filters": [32, 64], "dense_units": 128},
        "data": {
            "kind": "synthetic",
            "num_classes": 10,
            "image_shape": [32, 32, 3],
            "train_examples": args.examples,
            "validation_examples": batch,
        },
        "optimizer": {"name": "adam", "learning_rate": 0.001},
        "epochs": args.epochs,
        "batch_size": batch,
        "deterministic": True,
        "precision": args.precision,
        "scaling": {
            "workers": 1,
            "cpus_per_worker": 1,
            "gpus_per_worker": gpus,
            "cpu_replicas_per_worker": 1 if gpus else args.cpu_replicas,
        },
        "backup": {"every_epochs": 1, "every_steps": max(2, steps // 3), "keep": 2},
        "failures": {"max_failures": 2},
        "monitoring": {"tensorboard": False, "plot": False},
    }


def _write(folder: Path, raw: dict[str, Any], name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**raw, "name": name}, sort_keys=False))
    return path


def _run_and_kill(folder: Path, raw: dict[str, Any], store: Any) -> str | None:
    """Run job ``killed``, SIGKILL its worker after its second backup; where it was killed, or None."""
    from orchestrator.runner import run_job
    from orchestrator.status import JobStatus

    outcome: dict[str, Any] = {}
    spec = _write(folder, raw, "killed")
    thread = threading.Thread(target=lambda: outcome.update(result=run_job(spec, store=store)), daemon=True)
    thread.start()
    while len(store.backup_names("killed") if "killed" in store.job_names() else []) < 2:
        if not thread.is_alive():
            return None
        time.sleep(0.1)
    match = re.search(r"rank 0/1 on \S+ \(pid (\d+)", store.read_logs("killed").get("worker-0.log", ""))
    progress = store.read_progress("killed")
    if match is None:
        return None
    os.kill(int(match.group(1)), signal.SIGKILL)
    thread.join()
    if outcome["result"].status is not JobStatus.SUCCEEDED:
        return None
    return f"SIGKILL at epoch {progress.epoch + 1}, step {progress.step}" if progress else "SIGKILL"


def final_model(store: Any, job: str) -> Any:
    import tf_keras as keras

    return keras.models.load_model(store.url_of(job, "model", "final.keras"))


def _final_loss_scale(store: Any, job: str) -> tuple[float, int] | None:
    from orchestrator.worker.backup import CHECKPOINT_PREFIX
    from orchestrator.worker.devices import checkpoint_loss_scale

    names = store.backup_names(job)
    if not names:
        return None
    found = glob.glob(os.path.join(store.path(job, "checkpoints", names[-1]), f"{CHECKPOINT_PREFIX}*.index"))
    return checkpoint_loss_scale(found[0].removesuffix(".index")) if found else None


def _samples_per_second(store: Any, job: str, raw: dict[str, Any]) -> float:
    """Over the epochs after the first (which traces the step function)."""
    history = store.read_history(job)[1:] or store.read_history(job)
    steps = raw["data"]["train_examples"] // raw["batch_size"]
    return float(steps * raw["batch_size"] * len(history) / sum(r.seconds for r in history))


def _plain_fit(raw: dict[str, Any], gpus: int, replicas: int) -> float:
    """Samples/s of a plain ``model.fit`` of the same model and data under MirroredStrategy on the same devices."""
    import tf_keras as keras

    from orchestrator.recipes import datasets
    from orchestrator.recipes.models import build_model
    from orchestrator.spec import JobSpec

    spec = JobSpec.model_validate(raw)
    if not gpus and replicas > 1:
        [cpu] = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    keras.mixed_precision.set_global_policy(spec.precision)
    data = datasets.load(spec.data, seed=spec.seed, keras_cache_url=None, loss=spec.loss)
    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        model = build_model(spec.model, data.input_shape, data.num_classes, binary=False)
        model.compile(optimizer=keras.optimizers.Adam(0.001), loss=spec.loss, metrics=["accuracy"])
    images = data.x_train.astype("float32") / (255.0 if data.x_train.dtype == np.uint8 else 1.0)
    train = tf.data.Dataset.from_tensor_slices((images, data.y_train)).shuffle(4096, seed=spec.seed)
    train = train.batch(spec.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    seconds: list[float] = []

    class Clock(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            seconds.append(time.monotonic() - self.started)

    model.fit(train, epochs=spec.epochs, callbacks=[Clock()], verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    timed = seconds[1:] or seconds
    steps = len(data.x_train) // spec.batch_size
    return steps * spec.batch_size * len(timed) / sum(timed)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
