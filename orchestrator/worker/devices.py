"""The worker's devices and strategy: one replica per GPU, or per logical CPU device where a test asks for several.

On a GPU worker ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy`` place one replica on each GPU the worker
sees (Ray sets ``CUDA_VISIBLE_DEVICES`` to the worker's ``gpus_per_worker``). Without GPUs they place one replica
on the CPU. ``scaling.cpu_replicas_per_worker: N`` (a testing setting) splits the CPU into N logical devices
before TensorFlow initialises its devices, and places one replica on each: a worker then runs N replicas in sync
as it would on N GPUs (per-replica batches, cross-replica all-reduce, mirrored variables), only slower.

``MirroredStrategy()`` takes every logical CPU device by itself where there is no GPU;
``MultiWorkerMirroredStrategy`` always takes one CPU device per worker (TensorFlow's
``CollectiveAllReduceExtended._initialize_local_devices``), so with several CPU replicas it is built with an
extended class that lists them all (``_CpuReplicasExtended``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator
from typing import Any

import tensorflow as tf
from tensorflow.python.distribute import collective_all_reduce_strategy, collective_util

Precision = str  # "float32" | "mixed_float16" | "mixed_bfloat16" (JobSpec.precision)


def split_cpu(replicas: int, log: logging.Logger) -> None:
    """Split the CPU into ``replicas`` logical devices; call before any TensorFlow op initialises devices."""
    if replicas <= 1:
        return
    if tf.config.list_physical_devices("GPU"):
        log.warning(
            "scaling.cpu_replicas_per_worker: %d ignored, this worker has GPUs (it is a CPU-only testing setting)",
            replicas,
        )
        return
    [cpu] = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    log.info("CPU split into %d logical devices, one replica each (scaling.cpu_replicas_per_worker)", replicas)


def make_strategy(world_size: int, cpu_replicas: int) -> tf.distribute.Strategy:
    """The worker's strategy: MultiWorkerMirroredStrategy across workers, else MirroredStrategy."""
    if world_size > 1:
        if cpu_replicas > 1 and not tf.config.list_physical_devices("GPU"):
            return _CpuReplicasStrategy(cpu_replicas)
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy()


class _CpuReplicasExtended(collective_all_reduce_strategy.CollectiveAllReduceExtended):
    """TensorFlow's multi-worker extended, with every logical CPU device of the worker as a local replica."""

    cpu_replicas = 1  # set on a subclass before construction: the extended picks its devices in __init__

    def _initialize_local_devices(self, cluster_resolver: Any, worker_device: str) -> tuple[tuple[str, ...], str]:
        devices, kind = super()._initialize_local_devices(cluster_resolver, worker_device)
        if kind != "CPU" or self.cpu_replicas <= 1:
            return devices, kind
        return tuple(f"{worker_device}/device:CPU:{i}" for i in range(self.cpu_replicas)), "CPU"


class _CpuReplicasStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` with ``replicas`` local replicas on the logical CPU devices."""

    def __init__(self, replicas: int) -> None:
        extended = type("_Extended", (_CpuReplicasExtended,), {"cpu_replicas": replicas})
        # MultiWorkerMirroredStrategy.__init__ builds its own extended; build the Strategy around this one instead
        super(collective_all_reduce_strategy.CollectiveAllReduceStrategy, self).__init__(
            extended(self, cluster_resolver=None, communication_options=collective_util.Options())
        )


def initial_broadcast_problem() -> str | None:
    """What is missing of the TensorFlow internal ``local_initial_values`` replaces, or None (a unit test calls
    this, so an upgrade that moves it fails there)."""
    method = getattr(
        collective_all_reduce_strategy.CollectiveAllReduceExtended, "_get_variable_creator_initial_value", None
    )
    if method is None:
        return "CollectiveAllReduceExtended._get_variable_creator_initial_value is gone"
    params = list(inspect.signature(method).parameters)
    if params[:4] != ["self", "replica_id", "device", "primary_var"]:
        return f"CollectiveAllReduceExtended._get_variable_creator_initial_value takes {params}"
    return None


@contextlib.contextmanager
def local_initial_values(strategy: tf.distribute.Strategy, log: logging.Logger) -> Iterator[None]:
    """Variables created meanwhile take their initial value on each worker, without rank 0's broadcast.

    Under MultiWorkerMirroredStrategy every variable's initial value is broadcast from rank 0, one collective
    per variable, so that random initial weights are the same everywhere. What ``compile()`` and the optimizer's
    ``build`` create (slots, the step counter, the LR, the loss scale, the metrics' totals) starts from constants,
    the same on every worker: the broadcasts are only waiting, about 0.1 s of every start here (25 variables of
    the benchmark's model), more across machines. Only for those: the model's weights are built outside.
    """
    extended = strategy.extended
    if (
        not isinstance(extended, collective_all_reduce_strategy.CollectiveAllReduceExtended)
        or extended._num_workers <= 1
    ):
        yield
        return
    problem = initial_broadcast_problem()
    if problem is not None:
        log.info("optimizer and metric variables broadcast from rank 0 as TensorFlow does (%s)", problem)
        yield
        return
    broadcast = extended._get_variable_creator_initial_value

    def local(replica_id: int, device: Any, primary_var: Any, **kwargs: Any) -> Any:
        if replica_id != 0:  # the other local replicas copy the first one's value, as TensorFlow does
            return broadcast(replica_id=replica_id, device=device, primary_var=primary_var, **kwargs)

        def initial_value_fn() -> tf.Tensor:
            with tf.device(device):
                value = kwargs["initial_value"]
                value = value() if callable(value) else value
                value = getattr(value, "wrapped_value", value)  # a CheckpointInitialValue
                return tf.convert_to_tensor(value, dtype=kwargs.get("dtype"))

        return initial_value_fn

    extended._get_variable_creator_initial_value = local
    try:
        yield
    finally:
        del extended._get_variable_creator_initial_value  # the class's, broadcasting, again


def apply_precision(precision: Precision, log: logging.Logger) -> None:
    """The Keras mixed-precision policy for every layer built after this (the model: call before building it)."""
    import tf_keras as keras

    keras.mixed_precision.set_global_policy(precision)
    if precision != "float32":
        log.info(
            "precision %s: layers compute in %s with float32 variables%s",
            precision,
            precision.removeprefix("mixed_"),
            "; the optimizer is wrapped in a LossScaleOptimizer (dynamic loss scale, kept in every backup)"
            if precision == "mixed_float16"
            else "",
        )


def float32_outputs(model: Any, log: logging.Logger) -> Any:
    """``model``, with a float32 cast after any output that is not float32 (a user model built under a mixed
    policy whose last layer computes in float16): the loss and a softmax then run in float32."""
    import tf_keras as keras

    outputs = model.outputs
    if all(out.dtype == tf.float32 for out in outputs):
        return model
    log.warning(
        "model output is %s under a mixed precision policy: adding a float32 cast after it (build the last layer "
        "with dtype='float32' to avoid this)",
        ", ".join(str(out.dtype.name) for out in outputs),
    )
    cast = [
        keras.layers.Activation("linear", dtype="float32", name=f"float32_output_{i}")(out)
        for i, out in enumerate(outputs)
    ]
    return keras.Model(model.inputs, cast if len(cast) > 1 else cast[0], name=model.name)


def loss_scale(optimizer: Any) -> tuple[float, int] | None:
    """A LossScaleOptimizer's dynamic loss scale and its good steps (steps since the scale last changed), or
    None for another optimizer. Both are training state: the checkpoint (a backup) holds them."""
    import tf_keras as keras

    if not isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer) or not optimizer.dynamic:
        return None
    return float(optimizer.loss_scale.numpy()), int(optimizer.dynamic_counter.numpy())


def log_loss_scale(optimizer: Any, *, restored: bool, log: logging.Logger) -> None:
    """Log a dynamic loss scale where the optimizer has one: restored from a backup, or the initial one."""
    scale = loss_scale(optimizer)
    if scale is not None:
        log.info(
            "dynamic loss scale %g, %d good steps since it last changed (%s)",
            *scale,
            "restored from the backup" if restored else "initial",
        )


def checkpoint_loss_scale(prefix: str) -> tuple[float, int] | None:
    """The dynamic loss scale and good steps a backup's checkpoint (``prefix``) holds, or None without one."""
    names = dict(tf.train.list_variables(prefix))
    scale = next((n for n in names if n.endswith("loss_scale/current_loss_scale/.ATTRIBUTES/VARIABLE_VALUE")), None)
    steps = next((n for n in names if n.endswith("loss_scale/good_steps/.ATTRIBUTES/VARIABLE_VALUE")), None)
    if scale is None or steps is None:
        return None
    return float(tf.train.load_variable(prefix, scale)), int(tf.train.load_variable(prefix, steps))
