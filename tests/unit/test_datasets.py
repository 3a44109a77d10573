"""Data sources, loaded into numpy (no TensorFlow): synthetic generation and .npz files over fsspec."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from orchestrator.errors import DataError
from orchestrator.recipes.datasets import load, npz, synthetic
from orchestrator.spec import NpzData, SyntheticData

SMALL = SyntheticData(
    kind="synthetic",
    num_classes=4,
    image_shape=(12, 12, 1),
    train_examples=400,
    validation_examples=100,
    noise=1.0,
    max_shift=2,
)


def test_synthetic_data_is_identical_for_the_same_seed_and_differs_across_seeds() -> None:
    first, again, other = synthetic(SMALL, seed=3), synthetic(SMALL, seed=3), synthetic(SMALL, seed=4)
    np.testing.assert_array_equal(first.x_train, again.x_train)
    np.testing.assert_array_equal(first.y_val, again.y_val)
    assert not np.array_equal(first.x_train, other.x_train)


def test_synthetic_data_has_the_requested_shapes_and_classes() -> None:
    data = synthetic(SMALL, seed=0)
    assert data.x_train.shape == (400, 12, 12, 1) and data.x_train.dtype == np.float32
    assert data.x_val.shape == (100, 12, 12, 1)
    assert set(np.unique(data.y_train)) == {0, 1, 2, 3}
    assert data.num_classes == 4 and data.input_shape == (12, 12, 1)


def test_synthetic_labels_carry_a_signal_that_generalises_to_the_validation_split() -> None:
    spec = SyntheticData(
        kind="synthetic", num_classes=10, train_examples=2000, validation_examples=500, noise=1.5, max_shift=4
    )
    data = synthetic(spec, seed=7)
    centroids = np.stack([data.x_train[data.y_train == c].mean(axis=0) for c in range(10)])
    distances = ((data.x_val[:, None] - centroids[None]) ** 2).sum(axis=(2, 3, 4))
    accuracy = float((distances.argmin(axis=1) == data.y_val).mean())
    assert accuracy > 0.5  # chance is 0.1; labels drawn independently of images would stay near it


def write_npz(url: str, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    with fsspec.open(url, "wb") as handle:
        handle.write(buffer.getvalue())


@pytest.fixture(params=["file", "memory"])
def npz_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'set.npz'}"
    return f"memory://data-{uuid.uuid4().hex}/set.npz"


def test_npz_with_grey_images_and_one_hot_labels_is_normalised(npz_url: str) -> None:
    images = np.arange(10 * 5 * 5, dtype=np.uint8).reshape(10, 5, 5)
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]]
    write_npz(npz_url, x_train=images, y_train=labels)
    data = npz(NpzData(kind="npz", url=npz_url, validation_split=0.2))
    assert data.x_train.shape == (8, 5, 5, 1) and data.x_val.shape == (2, 5, 5, 1)
    assert data.y_train.tolist() == [0, 1, 2, 0, 1, 2, 0, 1] and data.y_val.tolist() == [2, 0]
    assert data.num_classes == 3
    np.testing.assert_array_equal(data.x_val[..., 0], images[8:])


def test_npz_validation_arrays_win_over_the_split(npz_url: str) -> None:
    write_npz(
        npz_url,
        x_train=np.zeros((6, 4, 4, 3)),
        y_train=np.array([0, 1] * 3),
        x_val=np.ones((2, 4, 4, 3)),
        y_val=np.array([[1], [0]]),
    )
    data = load(NpzData(kind="npz", url=npz_url, validation_split=0.5), seed=0)
    assert len(data.x_train) == 6 and data.y_val.tolist() == [1, 0]


def test_npz_without_training_arrays_names_what_it_found(npz_url: str) -> None:
    write_npz(npz_url, images=np.zeros((2, 3, 3)))
    with pytest.raises(DataError) as caught:
        npz(NpzData(kind="npz", url=npz_url))
    assert "missing arrays x_train, y_train; found images" in caught.value.message


def test_npz_with_mismatched_lengths_is_refused(npz_url: str) -> None:
    write_npz(npz_url, x_train=np.zeros((5, 3, 3)), y_train=np.zeros(4))
    with pytest.raises(DataError, match="x_train has 5 examples but y_train has 4"):
        npz(NpzData(kind="npz", url=npz_url))


def test_missing_npz_is_a_data_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        npz(NpzData(kind="npz", url=str(tmp_path / "nope.npz")))
    assert "does not exist" in caught.value.message and "x_train" in (caught.value.hint or "")


def test_a_file_that_is_not_npz_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "set.npz"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"is not a readable \.npz file"):
        npz(NpzData(kind="npz", url=str(path)))
