"""The input pipeline under (MultiWorker)MirroredStrategy.

Design (the pitfalls in docs/architecture.md that measured the alternatives on this machine are named below):

* One ``tf.data`` pipeline per ``fit()`` that spans exactly the epochs still to train, built with
  ``distribute_datasets_from_function``. tf_keras never recreates the iterator of a distributed dataset, so
  the distributed iterator is built once per fit, not once per epoch ("A finite dataset per epoch"); and the
  dataset is finite, ending exactly when the last step is taken, so no ``.repeat()`` prefetch thread is still
  running when ``fit()`` returns and the iterator is destroyed ("Repeat and a late fit").
* The order of an epoch is a stateless shuffle seeded by ``(seed, epoch)``: every worker computes the same
  global order without talking to the others, and a resume at ``(epoch, step)`` rebuilds exactly the batches
  that were still to come (``skip(step)``), not the start of the epoch again ("Mid-epoch resume and the data
  position").
* Global batch ``g`` of an epoch is the same examples whatever the number of workers: each input pipeline
  takes its contiguous slice of ``g`` and splits it into per-replica batches for its local replicas.
* Training-stream augmentation (``augmentation.py``) is drawn per example from (seed, epoch, example index),
  which travel with each example's index, so it is replayed exactly by a resume as well.
* The pipeline's functions branch only on Python values, never on tensors, so tf.data traces them as they
  are (``plain``): autograph's conversion of them took 0.39 s of a worker's start against 0.12 s without,
  measured in one process here, and every restart pays it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf

from orchestrator.worker.augmentation import Augmenter

Encoder = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
plain = tf.autograph.experimental.do_not_convert  # see the module docstring


@dataclass(frozen=True)
class EpochPlan:
    """Which part of the training stream a ``fit()`` call consumes."""

    start_epoch: int
    end_epoch: int
    start_step: int = 0


def fit_segments(start_epoch: int, start_step: int, epochs: int, boundaries: Sequence[int] = ()) -> list[EpochPlan]:
    """The ``fit()`` calls that train from ``(start_epoch, start_step)`` to the end: a partial epoch is its own,
    and no call crosses one of the ``boundaries`` (epochs where a phase starts: the model is recompiled there)."""
    segments = []
    if start_step:
        segments.append(EpochPlan(start_epoch, start_epoch + 1, start_step))
        start_epoch += 1
    edges = [start_epoch, *sorted({b for b in boundaries if start_epoch < b < epochs}), epochs]
    segments += [EpochPlan(first, last) for first, last in itertools.pairwise(edges) if first < last]
    return segments


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """Full global batches per epoch; the remainder of an epoch's order is left out (every replica steps alike)."""
    return num_examples // global_batch


def make_encoder(
    *, images_dtype: np.dtype[Any], num_classes: int, loss: str, resize: tuple[int, int] | None
) -> Encoder:
    """Per-batch conversion: float images in [0, 1] for uint8 sources, optional resize, labels for the loss."""
    scale = 1.0 / 255.0 if images_dtype == np.uint8 else None

    def encode(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.cast(images, tf.float32)
        if scale is not None:
            images = images * scale
        if resize is not None:
            images = tf.image.resize(images, resize)
        if loss == "categorical_crossentropy":
            labels = tf.one_hot(labels, num_classes)
        elif loss == "binary_crossentropy":
            labels = tf.cast(tf.reshape(labels, [-1, 1]), tf.float32)
        return images, labels

    return encode


class IteratorReaper:
    """Destroys the iterators a ``fit()`` made on a background thread, so the training thread does not wait.

    Destroying a tf.data iterator waits for the threads of its thread pool to wind down
    (``IteratorResource::~IteratorResource`` -> ``UnboundedThreadPool``): measured here, 0.4-3 s at the end
    of every ``fit()`` on a busy 2-core machine and up to 50 s in jobs on a saturated one, nothing on an
    idle one; with or without prefetching and parallel maps. tf_keras drops its iterator when ``fit()``
    returns, on the training thread: the end of a job, a resumed partial epoch and a phase switch each paid it.
    ``watch`` makes a distributed dataset record every iterator made from it; ``reap`` hands them to a
    daemon thread that drops them, where the wait no longer holds anything up.

    Example::

        reaper = IteratorReaper()
        model.fit(reaper.watch(dataset), ...)
        reaper.reap()
    """

    _classes: ClassVar[dict[type, type]] = {}

    def __init__(self) -> None:
        self._held: list[Any] = []

    def watch(self, dataset: Any) -> Any:
        """``dataset`` (a tf.distribute dataset), recording the iterators made from it here."""
        base = type(dataset)
        watched = self._classes.get(base)
        if watched is None:

            def __iter__(self: Any) -> Any:
                iterator = base.__iter__(self)
                self._orchestrator_reaper._held.append(iterator)
                return iterator

            watched = type(f"Reaped{base.__name__}", (base,), {"__iter__": __iter__})
            self._classes[base] = watched
        dataset.__class__ = watched
        dataset._orchestrator_reaper = self
        return dataset

    def reap(self) -> None:
        """Drop the recorded iterators on a daemon thread."""
        held, self._held = self._held, []
        if held:
            threading.Thread(target=held.clear, name="iterator-reaper", daemon=True).start()


class Tensors:
    """A worker's arrays as tensors, each copied once however many streams are made from it.

    Each ``fit()`` of an attempt (a resumed partial epoch and the rest, each phase) makes its own streams; the
    tensors they read from are the same, made once: a copy of the training set each time otherwise.

    ``start`` begins the copies in background threads, from the moment the arrays are loaded: TensorFlow copies
    without holding the GIL, so the copy overlaps the model's build, its broadcast and the restore instead of
    delaying the first step (measured: 1-2 s of a restart for the benchmark's 231 MB training set, read from the
    node's memory-mapped copy).
    """

    def __init__(self) -> None:
        self._held: dict[int, tuple[np.ndarray, tf.Tensor]] = {}
        self._pending: dict[int, tuple[np.ndarray, threading.Thread, list[Any]]] = {}

    def start(self, *arrays: np.ndarray) -> None:
        """Begin copying ``arrays`` (those not copied or begun already) in background threads."""
        for array in arrays:
            if id(array) in self._held or id(array) in self._pending:
                continue
            box: list[Any] = []
            thread = threading.Thread(target=_copy_into, args=(array, box), name="tensor-copy", daemon=True)
            self._pending[id(array)] = (array, thread, box)
            thread.start()

    def __call__(self, array: np.ndarray) -> tf.Tensor:
        held = self._held.get(id(array))
        if held is not None and held[0] is array:  # the array is held too: its id is not reused meanwhile
            return held[1]
        pending = self._pending.pop(id(array), None)
        if pending is not None and pending[0] is array:
            pending[1].join()
            result = pending[2][0] if pending[2] else None
            if isinstance(result, BaseException):
                raise result
            tensor = result if result is not None else tf.constant(array)
        else:
            tensor = tf.constant(array)
        self._held[id(array)] = (array, tensor)
        return tensor


def _copy_into(array: np.ndarray, box: list[Any]) -> None:
    try:
        box.append(tf.constant(array))
    except BaseException as exc:  # raised again where the tensor is needed
        box.append(exc)


def distributed_dataset(
    strategy: tf.distribute.Strategy,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    global_batch: int,
    seed: int,
    plan: EpochPlan,
    shuffle: bool,
    encode: Encoder,
    augment: Augmenter | None = None,
    tensors: Tensors | None = None,
) -> Any:
    """A distributed dataset of exactly ``(end_epoch - start_epoch) * steps - start_step`` global batches.

    ``augment`` (training streams only) changes each encoded image by its example's random draws. ``tensors``:
    where the arrays' tensors are kept between streams (a fresh copy for this stream alone without it).
    """
    convert = tensors if tensors is not None else tf.constant
    images_t, labels_t = convert(images), convert(labels)
    return strategy.distribute_datasets_from_function(
        lambda context: pipeline_dataset(
            context,
            images_t,
            labels_t,
            global_batch=global_batch,
            seed=seed,
            plan=plan,
            shuffle=shuffle,
            encode=encode,
            augment=augment,
        )
    )


def pipeline_dataset(
    context: tf.distribute.InputContext,
    images: tf.Tensor,
    labels: tf.Tensor,
    *,
    global_batch: int,
    seed: int,
    plan: EpochPlan,
    shuffle: bool,
    encode: Encoder,
    augment: Augmenter | None = None,
) -> tf.data.Dataset:
    """One input pipeline's share: per global batch, its contiguous slice, as per-replica batches."""
    num_examples = int(images.shape[0])
    steps = steps_per_epoch(num_examples, global_batch)
    per_replica = context.get_per_replica_batch_size(global_batch)
    slice_size = per_replica * (context.num_replicas_in_sync // context.num_input_pipelines)
    offset = context.input_pipeline_id * slice_size
    order = epoch_order_fn(num_examples, steps, global_batch, seed, shuffle)

    @plain
    def this_pipelines_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        indices = order(epoch)[:, offset : offset + slice_size]
        if augment is None:
            return tf.data.Dataset.from_tensor_slices(indices)
        return tf.data.Dataset.from_tensor_slices((tf.fill(tf.shape(indices), epoch), indices))

    dataset = tf.data.Dataset.range(plan.start_epoch, plan.end_epoch).flat_map(this_pipelines_batches)
    dataset = dataset.skip(plan.start_step).unbatch()
    if augment is None:
        dataset = dataset.batch(per_replica, drop_remainder=True).map(
            plain(lambda index: encode(tf.gather(images, index), tf.gather(labels, index))),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    else:
        dataset = _augmented(dataset, images, labels, per_replica, encode, augment)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _augmented(
    examples: tf.data.Dataset,
    images: tf.Tensor,
    labels: tf.Tensor,
    per_replica: int,
    encode: Encoder,
    augment: Augmenter,
) -> tf.data.Dataset:
    """(epoch, index) examples -> encoded, augmented per-replica batches; the draws are made per example."""

    @plain
    def encode_and_augment(index: tf.Tensor, draws: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch, target = encode(tf.gather(images, index), tf.gather(labels, index))
        return augment(batch, draws), target

    examples = examples.map(
        plain(lambda epoch, index: (index, augment.draw(epoch, index))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return examples.batch(per_replica, drop_remainder=True).map(
        encode_and_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def epoch_order_fn(
    num_examples: int, steps: int, global_batch: int, seed: int, shuffle: bool
) -> Callable[[tf.Tensor], tf.Tensor]:
    """``epoch -> [steps, global_batch]`` example indices: the global batches of that epoch, in order."""

    def order(epoch: tf.Tensor) -> tf.Tensor:
        indices = tf.range(num_examples, dtype=tf.int64)
        if shuffle:
            key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
            indices = tf.random.experimental.stateless_shuffle(indices, seed=key)
        return tf.reshape(indices[: steps * global_batch], [steps, global_batch])

    return order
