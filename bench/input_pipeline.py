"""Input pipeline under 2-worker MultiWorkerMirroredStrategy: the orchestrator's design vs the usual ones.

    python -m bench.input_pipeline [--epochs 5] [--rounds 3] [--json results.json]

Variants, alternated round by round inside the same two Ray Train workers (same model, data and strategy):

* ``finite``: a finite per-epoch ``tf.data.Dataset`` handed to ``fit()`` (tf_keras distributes it and
  rebuilds the distributed iterator every epoch: docs/architecture.md, "A finite dataset per epoch");
* ``repeat``: the same with ``.repeat()`` and ``steps_per_epoch`` (iterator kept, but an endless prefetch is
  still running when ``fit()`` returns: "Repeat and a late fit");
* ``orchestrator``: ``orchestrator.worker.pipeline.distributed_dataset`` (one exact stream per fit);
* ``orchestrator+progress``: the same plus the rank-0 ProgressCallback the product attaches ("Per-step hooks");
* ``+keras validation``: ``orchestrator`` plus ``validation_data`` (Keras rebuilds its iterator every epoch);
* ``+stream validation``: ``orchestrator`` plus StreamValidation, as the product validates (one stream per fit).

Figures per variant (median over rounds, with min-max): epoch period (wall time between epoch starts,
epochs 2.. only: the first carries tracing), fit tail (from the last epoch's end to ``fit()`` returning,
slowest worker) and fit skew (spread of the workers' return times). Absolute seconds depend on the machine;
read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = ("finite", "repeat", "orchestrator", "orchestrator+progress", "+keras validation", "+stream validation")


def worker_loop(config: dict[str, Any]) -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import ray.train
    import tensorflow as tf
    import tf_keras as keras

    from orchestrator.recipes.datasets import synthetic
    from orchestrator.spec import SyntheticData
    from orchestrator.store import JobStore
    from orchestrator.worker.pipeline import EpochPlan, distributed_dataset, make_encoder, steps_per_epoch
    from orchestrator.worker.progress import ProgressCallback
    from orchestrator.worker.store_writer import StoreWriter
    from orchestrator.worker.validation import StreamValidation

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rank = ray.train.get_context().get_world_rank()
    epochs, batch = config["epochs"], config["batch"]
    data = synthetic(SyntheticData(kind="synthetic", train_examples=config["examples"]), 0)
    steps = steps_per_epoch(len(data.x_train), batch)
    validation_steps = steps_per_epoch(len(data.x_val), batch)
    encode = make_encoder(images_dtype=data.x_train.dtype, num_classes=10, loss="sparse", resize=None)
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input(shape=data.input_shape),
                keras.layers.Conv2D(16, 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(32, 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Flatten(),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(10, "softmax"),
            ]
        )
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")

    def plain(repeat: bool) -> Any:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train)).shuffle(4096, seed=0)
        dataset = dataset.batch(batch, drop_remainder=True)
        # As users write it: the plain dataset goes to fit(), which distributes it itself.
        return (dataset.repeat() if repeat else dataset).with_options(options).prefetch(tf.data.AUTOTUNE)

    class EpochClock(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.starts: list[float] = []
            self.last_end = 0.0
            self.train_end = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.starts.append(time.monotonic())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.last_end = time.monotonic()

        def on_train_end(self, logs: Any = None) -> None:
            self.train_end = time.monotonic()

    store = JobStore(config["scratch"])
    results: list[dict[str, Any]] = []
    for round_index in range(config["rounds"]):
        for variant in VARIANTS:
            clock = EpochClock()
            callbacks: list[Any] = [clock]
            writer = None
            extra: dict[str, Any] = {}
            if variant == "finite":
                dataset, steps_arg = plain(repeat=False), None
            elif variant == "repeat":
                dataset, steps_arg = plain(repeat=True), steps
            else:
                plan = EpochPlan(0, epochs)
                dataset = distributed_dataset(
                    strategy,
                    data.x_train,
                    data.y_train,
                    global_batch=batch,
                    seed=0,
                    plan=plan,
                    shuffle=True,
                    encode=encode,
                )
                steps_arg = steps
                if variant == "+keras validation":
                    extra = {
                        "validation_steps": validation_steps,
                        "validation_data": distributed_dataset(
                            strategy,
                            data.x_val,
                            data.y_val,
                            global_batch=batch,
                            seed=0,
                            plan=EpochPlan(0, 1),
                            shuffle=False,
                            encode=encode,
                        ),
                    }
                if variant == "+stream validation":
                    callbacks.insert(
                        0,
                        StreamValidation(
                            distributed_dataset(
                                strategy,
                                data.x_val,
                                data.y_val,
                                global_batch=batch,
                                seed=0,
                                plan=plan,
                                shuffle=False,
                                encode=encode,
                            ),
                            validation_steps,
                        ),
                    )
                if variant == "orchestrator+progress" and rank == 0:
                    writer = StoreWriter(store, "bench", log_name="bench.log")
                    callbacks.append(
                        ProgressCallback(writer, attempt=1, epochs=epochs, steps_per_epoch=steps, global_batch=batch)
                    )
            model.fit(dataset, epochs=epochs, steps_per_epoch=steps_arg, callbacks=callbacks, verbose=0, **extra)
            returned = time.monotonic()
            returned_wall = time.time()
            del dataset
            if writer is not None:
                writer.close()
            periods = [b - a for a, b in zip(clock.starts[1:], clock.starts[2:], strict=False)]
            periods.append(clock.last_end - clock.starts[-1])
            results.append(
                {
                    "round": round_index,
                    "variant": variant,
                    "rank": rank,
                    "steps": steps,
                    "epoch_period": statistics.median(periods),
                    "tail": returned - clock.last_end,
                    "before_train_end": clock.train_end - clock.last_end,
                    "after_train_end": returned - clock.train_end,
                    "returned_wall": returned_wall,
                }
            )
    Path(config["out"], f"rank-{rank}.json").write_text(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from ray.train import RunConfig, ScalingConfig

    from orchestrator.launcher import connect_ray, tensorflow_trainer_class

    trainer_class = tensorflow_trainer_class()
    connect_ray()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch:
        out = Path(scratch, "out")
        out.mkdir()
        config = {
            "epochs": args.epochs,
            "rounds": args.rounds,
            "examples": args.examples,
            "batch": args.batch,
            "out": str(out),
            "scratch": str(Path(scratch, "store")),
        }
        trainer_class(
            worker_loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="bench-input-pipeline", storage_path=str(Path(scratch, "ray"))),
        ).fit()
        rows = [row for rank_file in sorted(out.glob("rank-*.json")) for row in json.loads(rank_file.read_text())]
    table = summarise(rows)
    print_table(table, args)
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "rows": table}, indent=2))


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    rounds = sorted({row["round"] for row in rows})
    for variant in VARIANTS:
        periods, tails, skews = [], [], []
        for round_index in rounds:
            pair = [r for r in rows if r["variant"] == variant and r["round"] == round_index]
            periods.append(statistics.mean(r["epoch_period"] for r in pair))
            tails.append(max(r["tail"] for r in pair))
            skews.append(max(r["returned_wall"] for r in pair) - min(r["returned_wall"] for r in pair))
        table.append(
            {
                "variant": variant,
                "epoch_period_s": spread(periods),
                "fit_tail_s": spread(tails),
                "fit_skew_s": spread(skews),
                "steps_per_epoch": rows[0]["steps"],
            }
        )
    ours = statistics.median(table[2]["epoch_period_s"]["values"])
    for row in table:
        row["period_vs_orchestrator"] = round(statistics.median(row["epoch_period_s"]["values"]) / ours, 3)
    hook = statistics.median(table[3]["epoch_period_s"]["values"]) - ours
    table[3]["progress_cost_ms_per_step"] = round(1000 * hook / table[3]["steps_per_epoch"], 3)
    for row in table[4:]:
        row["validation_cost_s_per_epoch"] = round(statistics.median(row["epoch_period_s"]["values"]) - ours, 4)
    return table


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "values": [round(v, 4) for v in values],
    }


def print_table(table: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\ninput pipeline, 2 workers (MWMS), {args.examples} examples, global batch {args.batch}, "
        f"{args.epochs} epochs per fit, {args.rounds} rounds (median [min-max])"
    )
    header = f"{'variant':<24}{'epoch period s':>26}{'vs ours':>9}{'fit tail s':>26}{'fit skew s':>26}"
    print(header)
    print("-" * len(header))

    def cell(figure: dict[str, Any]) -> str:
        return f"{figure['median']:.3f} [{figure['min']:.3f}-{figure['max']:.3f}]"

    for row in table:
        print(
            f"{row['variant']:<24}{cell(row['epoch_period_s']):>26}{row['period_vs_orchestrator']:>9.3f}"
            f"{cell(row['fit_tail_s']):>26}{cell(row['fit_skew_s']):>26}"
        )
    print(f"progress callback: {table[3]['progress_cost_ms_per_step']:+.3f} ms per step (median difference)")
    for row in table[4:]:
        print(f"{row['variant']}: {row['validation_cost_s_per_epoch']:+.3f} s per epoch over no validation")


if __name__ == "__main__":
    main()
