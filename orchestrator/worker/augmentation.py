"""Random image augmentation for the training stream, replayable exactly after a resume.

Keras' preprocessing layers (RandomRotation, RandomFlip, ...) and ImageDataGenerator draw from a random state
that lives in the process: a resumed worker, or a second worker, would draw other numbers. Here every random
number is a stateless function of (job seed, epoch, example index), so

* a job resumed at ``(epoch, step)`` rebuilds exactly the augmented batches an uninterrupted run trains on;
* every worker draws the same numbers for an example, however the global batch is split across replicas.

Each example gets one affine transform (rotation, shear, zoom, shift about the image centre, edges filled with
the nearest pixel as ImageDataGenerator does), then its flips.
"""

from __future__ import annotations

import math

import tensorflow as tf

from orchestrator.spec import AugmentationSpec, ImageFolderData, KerasData, NpzData, SyntheticData

DRAWS = 8  # uniform numbers per example: rotation, shear, zoom x, zoom y, shift x, shift y, flip x, flip y
_SALT = 0x61756720  # keeps augmentation draws apart from the shuffle's, which is seeded by (seed, epoch)


class Augmenter:
    """Draws each training example's random changes and applies them to a batch.

    Args:
        spec: the ranges, as in the job spec's ``data.augmentation``.
        seed: the job's seed.

    Example::

        augment = Augmenter(AugmentationSpec(rotation=15, horizontal_flip=True), seed=0)
        draws = tf.stack([augment.draw(epoch, i) for i in indices])  # [batch, DRAWS]
        images = augment(images, draws)  # float images [batch, height, width, channels]
    """

    def __init__(self, spec: AugmentationSpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed
        self.moves = any((spec.rotation, spec.shear, spec.zoom, spec.width_shift, spec.height_shift))

    def draw(self, epoch: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        """``DRAWS`` uniform numbers in [0, 1) for one example: the same for the same (seed, epoch, index)."""
        key = tf.constant([self.seed, _SALT], tf.int64)
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(epoch, tf.int64), alg="philox")
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64), alg="philox")
        return tf.random.stateless_uniform([DRAWS], seed=key, alg="philox")

    def __call__(self, images: tf.Tensor, draws: tf.Tensor) -> tf.Tensor:
        """Apply each example's changes: ``images`` float ``[batch, H, W, C]``, ``draws`` ``[batch, DRAWS]``."""
        if self.moves:
            images = tf.raw_ops.ImageProjectiveTransformV3(
                images=images,
                transforms=self.transforms(draws, tf.shape(images)[1], tf.shape(images)[2]),
                output_shape=tf.shape(images)[1:3],
                fill_value=tf.constant(0.0, tf.float32),
                interpolation="BILINEAR",
                fill_mode="NEAREST",
            )
        if self.spec.horizontal_flip:
            images = _flip(images, draws[:, 6] < 0.5, axis=2)
        if self.spec.vertical_flip:
            images = _flip(images, draws[:, 7] < 0.5, axis=1)
        return images

    def transforms(self, draws: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
        """``[batch, 8]`` projective transforms mapping output pixels (x: column, y: row) to input pixels.

        The input point is ``centre + R(angle) S(shear) Z(zoom_x, zoom_y) (output - centre) + shift``.
        """
        spec = self.spec

        def symmetric(column: int, bound: float) -> tf.Tensor:
            return (2.0 * draws[:, column] - 1.0) * bound  # uniform in [-bound, bound)

        angle = symmetric(0, math.radians(spec.rotation))
        shear = symmetric(1, math.radians(spec.shear))
        zoom_x, zoom_y = 1.0 + symmetric(2, spec.zoom), 1.0 + symmetric(3, spec.zoom)
        height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
        shift_x, shift_y = symmetric(4, spec.width_shift) * width_f, symmetric(5, spec.height_shift) * height_f
        a0, a1 = tf.cos(angle) * zoom_x, -tf.sin(angle + shear) * zoom_y
        b0, b1 = tf.sin(angle) * zoom_x, tf.cos(angle + shear) * zoom_y
        centre_x, centre_y = (width_f - 1.0) / 2.0, (height_f - 1.0) / 2.0
        a2 = centre_x - a0 * centre_x - a1 * centre_y + shift_x
        b2 = centre_y - b0 * centre_x - b1 * centre_y + shift_y
        zeros = tf.zeros_like(a0)
        return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def _flip(images: tf.Tensor, flipped: tf.Tensor, axis: int) -> tf.Tensor:
    return tf.where(flipped[:, None, None, None], tf.reverse(images, axis=[axis]), images)


def make_augmenter(data: SyntheticData | NpzData | KerasData | ImageFolderData, seed: int) -> Augmenter | None:
    """The training stream's augmenter for a job's ``data`` and ``seed``; ``None`` (images used as they are)
    unless the data is an image folder with ``augmentation``."""
    if isinstance(data, ImageFolderData) and data.augmentation is not None:
        return Augmenter(data.augmentation, seed)
    return None
