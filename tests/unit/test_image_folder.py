"""Image-folder datasets (train/<class>/*.jpg over fsspec) and the training stream's replayable augmentation."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from orchestrator.errors import DataError
from orchestrator.recipes.datasets import check_image_folder_reachable, from_arrays, image_folder, load
from orchestrator.spec import AugmentationSpec, ImageFolderData, SyntheticData

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

from orchestrator.worker.augmentation import Augmenter, make_augmenter
from orchestrator.worker.pipeline import EpochPlan, distributed_dataset, pipeline_dataset

COLOURS = {"ants": (230, 20, 20), "bees": (20, 230, 20), "cats": (20, 20, 230)}  # one solid colour per class
FORMATS = [
    ("a.png", "PNG", (40, 30)),
    ("b.JPG", "JPEG", (16, 16)),
    ("c.jpeg", "JPEG", (9, 20)),
    ("d.bmp", "BMP", (8, 8)),
    ("e.gif", "GIF", (12, 7)),
    ("sub/f.png", "PNG", (5, 5)),
]


def encoded(colour: tuple[int, int, int], size: tuple[int, int], image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=image_format)
    return buffer.getvalue()


def put(url: str, content: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, content)


def make_folder(root: str, splits: dict[str, dict[str, int]]) -> None:
    """``splits``: split -> class -> number of images (cycling through the formats and sizes above)."""
    for split, classes in splits.items():
        for name, count in classes.items():
            for i in range(count):
                file, image_format, size = FORMATS[i % len(FORMATS)]
                put(f"{root}/{split}/{name}/{i}-{file}", encoded(COLOURS[name], size, image_format))


THREE = {"ants": 6, "bees": 7, "cats": 6}


@pytest.fixture(params=["file", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'images'}"
    return f"memory://images-{uuid.uuid4().hex}"


def spec_for(root: str, **fields: object) -> ImageFolderData:
    return ImageFolderData.model_validate({"kind": "image_folder", "url": root, "image_size": [10, 12], **fields})


def test_every_split_is_read_as_uint8_at_the_requested_size_with_labels_from_the_folders(root: str) -> None:
    make_folder(root, {"train": THREE, "val": {"ants": 2, "cats": 3}, "test": {"bees": 2}})
    put(f"{root}/train/ants/.DS_Store", b"not an image")  # hidden, skipped
    put(f"{root}/train/bees/notes.txt", b"not an image")  # not an image suffix, skipped
    put(f"{root}/train/.ipynb_checkpoints/x.png", encoded((0, 0, 0), (4, 4), "PNG"))  # hidden folder: no class
    data = load(spec_for(root), seed=0)
    assert data.class_names == ("ants", "bees", "cats") and data.num_classes == 3
    assert data.x_train.shape == (19, 10, 12, 3) and data.x_train.dtype == np.uint8
    assert data.x_val.shape == (5, 10, 12, 3) and data.x_test is not None and data.x_test.shape == (2, 10, 12, 3)
    assert data.y_train.tolist() == [0] * 6 + [1] * 7 + [2] * 6
    assert data.y_val.tolist() == [0, 0, 2, 2, 2] and data.y_test is not None and data.y_test.tolist() == [1, 1]
    for images, labels in [(data.x_train, data.y_train), (data.x_val, data.y_val), (data.x_test, data.y_test)]:
        dominant = images.reshape(len(images), -1, 3).mean(axis=1).argmax(axis=1)
        assert dominant.tolist() == labels.tolist()  # each image's colour is its folder's


def test_an_image_already_at_the_size_is_kept_pixel_for_pixel_and_greyscale_has_one_channel(root: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    make_folder(root, {"train": {"bees": 1}})
    put(f"{root}/train/ants/exact.png", buffer.getvalue())  # the first example: ants sorts before bees
    fs, path = fsspec.core.url_to_fs(f"{root}/val")
    fs.makedirs(path)  # an empty val/: no validation data
    data = image_folder(spec_for(root))
    np.testing.assert_array_equal(data.x_train[0], pixels)
    assert len(data.x_val) == 0 and data.x_test is None
    grey = image_folder(spec_for(root, channels=1))
    assert grey.x_train.shape == (2, 10, 12, 1)
    np.testing.assert_array_equal(grey.x_train[0, ..., 0], np.asarray(Image.fromarray(pixels).convert("L")))


def data_error(spec: ImageFolderData, loss: str | None = None) -> DataError:
    with pytest.raises(DataError) as caught:
        image_folder(spec, loss=loss)
    return caught.value


def test_a_folder_without_train_or_val_names_the_layout_it_expects(root: str) -> None:
    make_folder(f"{root}/a", {"val": THREE})
    message = data_error(spec_for(f"{root}/a")).message
    assert f"data.url: {root}/a has no train/ folder; expected train/<class>/*.jpg, val/<class>/*.jpg" in message
    make_folder(f"{root}/b", {"train": THREE})
    put(f"{root}/b/val", b"a file, not a folder")
    assert f"data.url: {root}/b has no val/ folder" in data_error(spec_for(f"{root}/b")).message
    with pytest.raises(DataError, match="has no val/ folder"):
        check_image_folder_reachable(spec_for(f"{root}/b"))
    assert f"data.url: {root}/c is not a folder" in data_error(spec_for(f"{root}/c")).message


def test_val_classes_must_be_those_of_train_or_some_of_them(root: str) -> None:
    make_folder(root, {"train": {"ants": 2, "bees": 2}, "val": {"bees": 1, "cats": 1}})
    message = data_error(spec_for(root)).message
    assert f"{root}/val has class folders that train/ does not have: cats" in message


def test_an_undecodable_file_is_named(root: str) -> None:
    make_folder(root, {"train": THREE, "val": {"ants": 1}})
    put(f"{root}/train/bees/broken.jpg", b"\xff\xd8 this is not a jpeg")
    message = data_error(spec_for(root)).message
    assert f"data.url: {root}/train/bees/broken.jpg is not a readable image" in message


def test_an_empty_class_folder_and_a_single_class_are_refused(root: str) -> None:
    make_folder(root, {"train": THREE, "val": {"ants": 1}})
    put(f"{root}/train/dogs/.hidden.png", encoded((0, 0, 0), (4, 4), "PNG"))  # the only file is hidden
    message = data_error(spec_for(root)).message
    assert f"{root}/train/dogs has no images; expected files ending in .jpg" in message
    single = f"{root}-single"
    make_folder(single, {"train": {"ants": 2}, "val": {"ants": 1}})
    with pytest.raises(DataError, match=r"train has 1 class folders \(only ants\); .* at least 2"):
        check_image_folder_reachable(spec_for(single))


def test_binary_crossentropy_needs_exactly_two_class_folders(root: str) -> None:
    make_folder(root, {"train": THREE, "val": {"ants": 1}})
    expected = (
        "loss binary_crossentropy needs 2 classes, but data.url has 3 class folders (ants, bees, cats); "
        "use categorical_crossentropy or sparse_categorical_crossentropy"
    )
    with pytest.raises(DataError) as caught:
        check_image_folder_reachable(spec_for(root), loss="binary_crossentropy")
    assert caught.value.message == expected
    assert data_error(spec_for(root), loss="binary_crossentropy").message == expected
    assert check_image_folder_reachable(spec_for(root), loss="sparse_categorical_crossentropy") == (
        "ants",
        "bees",
        "cats",
    )
    two = f"{root}-two"
    make_folder(two, {"train": {"ants": 1, "bees": 1}, "val": {"ants": 1}})
    assert check_image_folder_reachable(spec_for(two), loss="binary_crossentropy") == ("ants", "bees")


def test_npz_labels_beyond_one_are_refused_under_binary_crossentropy() -> None:
    arrays = {"x_train": np.zeros((4, 3, 3)), "y_train": np.array([0, 1, 2, 1])}
    with pytest.raises(DataError) as caught:
        from_arrays(arrays, source="s.npz", validation_split=0.0, loss="binary_crossentropy")
    assert caught.value.message.startswith("s.npz: y_train has labels 0, 1, 2; loss binary_crossentropy needs")
    arrays["y_train"] = np.array([0, 1, 1, 0])
    assert from_arrays(arrays, source="s.npz", validation_split=0.0, loss="binary_crossentropy").num_classes == 2
    arrays["y_train"] = np.array([0, 1, 2, 1])
    assert from_arrays(arrays, source="s.npz", validation_split=0.0).num_classes == 3  # other losses: any labels


# ---------------------------------------------------------------------------------------------- augmentation
ALL_ON = AugmentationSpec(
    rotation=25, width_shift=0.2, height_shift=0.1, shear=10, zoom=0.2, horizontal_flip=True, vertical_flip=True
)


def batch_of(count: int = 12, height: int = 8, width: int = 10) -> tf.Tensor:
    rng = np.random.default_rng(1)
    return tf.constant(rng.random((count, height, width, 3), dtype=np.float32))


def draws_for(augment: Augmenter, epoch: int, indices: range) -> tf.Tensor:
    return tf.stack([augment.draw(tf.constant(epoch, tf.int64), tf.constant(i, tf.int64)) for i in indices])


def test_augmentation_with_every_range_zero_is_the_identity() -> None:
    augment = Augmenter(AugmentationSpec(), seed=0)
    images = batch_of()
    np.testing.assert_array_equal(augment(images, draws_for(augment, 0, range(12))).numpy(), images.numpy())


def test_flips_flip_about_half_the_images_and_rotation_changes_every_image() -> None:
    images = batch_of(count=32)
    flip = Augmenter(AugmentationSpec(horizontal_flip=True), seed=0)
    out = flip(images, draws_for(flip, 0, range(32))).numpy()
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images.numpy(), strict=True)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images.numpy(), strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True)) and 4 < sum(flipped) < 28
    rotate = Augmenter(AugmentationSpec(rotation=30), seed=0)
    rotated = rotate(images, draws_for(rotate, 0, range(32))).numpy()
    assert all(not np.allclose(r, i, atol=1e-3) for r, i in zip(rotated, images.numpy(), strict=True))
    assert rotated.shape == images.shape and rotated.min() >= 0.0 and rotated.max() <= 1.0


def test_the_affine_transform_rotates_and_shifts_about_the_centre_with_nearest_fill() -> None:
    image = batch_of(count=1, height=6, width=6)
    centre = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.9]  # every range at its middle: no change
    quarter = Augmenter(AugmentationSpec(rotation=90), seed=0)  # a draw of 1.0 is the top of the range: +90
    turned = quarter(image, tf.constant([[1.0, *centre[1:]]])).numpy()[0]
    assert np.allclose(turned, np.rot90(image.numpy()[0]), atol=1e-5)  # out[y, x] = in[x, 5 - y]
    shift = Augmenter(AugmentationSpec(width_shift=0.5), seed=0)
    wide = batch_of(count=1, height=4, width=8)
    moved = shift(wide, tf.constant([[*centre[:4], 0.75, *centre[5:]]])).numpy()[0]  # +0.25 * 8: x' = x + 2
    expected = wide.numpy()[0][:, [min(x + 2, 7) for x in range(8)]]  # the right edge repeats (nearest)
    assert np.allclose(moved, expected, atol=1e-5)


def test_draws_are_a_function_of_seed_epoch_and_example_only() -> None:
    augment = Augmenter(ALL_ON, seed=5)
    first = draws_for(augment, 1, range(6)).numpy()
    np.testing.assert_array_equal(first, draws_for(Augmenter(ALL_ON, seed=5), 1, range(6)).numpy())
    np.testing.assert_array_equal(first[3], draws_for(augment, 1, range(3, 4)).numpy()[0])
    assert not np.allclose(first, draws_for(augment, 2, range(6)).numpy())  # another epoch
    assert not np.allclose(first, draws_for(Augmenter(ALL_ON, seed=6), 1, range(6)).numpy())  # another seed
    assert len({tuple(row) for row in first}) == 6  # another example


def test_only_an_image_folder_with_augmentation_gets_an_augmenter() -> None:
    assert make_augmenter(SyntheticData(kind="synthetic"), seed=0) is None
    assert make_augmenter(spec_for("memory://x"), seed=0) is None
    augment = make_augmenter(spec_for("memory://x", augmentation={"rotation": 10}), seed=3)
    assert augment is not None and augment.spec.rotation == 10 and augment.seed == 3


EXAMPLES, GLOBAL_BATCH, SEED = 22, 4, 7  # 5 steps per epoch, 2 examples left out


def identity(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(images, tf.float32) / 255.0, labels


def stream(plan: EpochPlan, augment: Augmenter | None) -> list[tuple[np.ndarray, np.ndarray]]:
    images = np.random.default_rng(2).integers(0, 256, size=(EXAMPLES, 6, 6, 3), dtype=np.uint8)
    dataset = distributed_dataset(
        tf.distribute.get_strategy(),
        images,
        np.arange(EXAMPLES),
        global_batch=GLOBAL_BATCH,
        seed=SEED,
        plan=plan,
        shuffle=True,
        encode=identity,
        augment=augment,
    )
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_a_resumed_stream_replays_exactly_the_augmented_batches_still_to_come() -> None:
    augment = Augmenter(ALL_ON, seed=SEED)
    uninterrupted = stream(EpochPlan(0, 2), augment)
    assert len(uninterrupted) == 10
    for start_epoch, start_step in [(0, 3), (1, 2)]:
        resumed = stream(EpochPlan(start_epoch, 2, start_step), augment)
        tail = uninterrupted[start_epoch * 5 + start_step :]
        assert len(resumed) == len(tail)
        for (x, y), (x_expected, y_expected) in zip(resumed, tail, strict=True):
            np.testing.assert_array_equal(y, y_expected)
            np.testing.assert_array_equal(x, x_expected)
    plain = stream(EpochPlan(0, 2), None)
    assert [y.tolist() for _, y in plain] == [y.tolist() for _, y in uninterrupted]  # same order, augmented
    assert all(not np.allclose(x, x_plain) for (x, _), (x_plain, _) in zip(uninterrupted, plain, strict=True))


def test_two_workers_slices_are_augmented_as_the_single_workers_global_batch() -> None:
    augment = Augmenter(ALL_ON, seed=SEED)
    images = tf.constant(np.random.default_rng(3).random((EXAMPLES, 5, 5, 3), dtype=np.float32))
    labels = tf.range(EXAMPLES, dtype=tf.int64)

    def pipeline(pipelines: int, pipeline_id: int) -> list[np.ndarray]:
        context = tf.distribute.InputContext(pipelines, pipeline_id, pipelines)
        dataset = pipeline_dataset(
            context,
            images,
            labels,
            global_batch=GLOBAL_BATCH,
            seed=SEED,
            plan=EpochPlan(0, 2),
            shuffle=True,
            encode=lambda x, y: (x, y),
            augment=augment,
        )
        return [x.numpy() for x, _ in dataset]

    whole, first, second = pipeline(1, 0), pipeline(2, 0), pipeline(2, 1)
    for batch, a, b in zip(whole, first, second, strict=True):
        np.testing.assert_array_equal(np.concatenate([a, b]), batch)
