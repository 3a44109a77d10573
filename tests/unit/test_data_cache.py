"""The node's copy of a job's arrays: the same arrays back, keyed by everything they depend on."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from orchestrator.spec import ImageFolderData, NpzData, SyntheticData
from orchestrator.worker import data_cache
from orchestrator.worker.backup_cache import CACHE_ENV

LOG = logging.getLogger("test")
SMALL = SyntheticData(kind="synthetic", num_classes=3, image_shape=(8, 8, 1), train_examples=64, validation_examples=16)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "datasets"


def same(a: object, b: object) -> None:
    for name in data_cache.ARRAYS:
        left, right = getattr(a, name), getattr(b, name)
        assert (left is None) == (right is None), name
        if left is not None:
            np.testing.assert_array_equal(left, right)
            assert left.dtype == right.dtype
    assert a.num_classes == b.num_classes  # type: ignore[attr-defined]


def test_a_second_load_reads_the_nodes_copy_and_gets_the_same_arrays(
    cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = data_cache.load(SMALL, seed=7, keras_cache_url=None, loss="sparse_categorical_crossentropy", log=LOG)
    assert len(list(cache.iterdir())) == 1
    with caplog.at_level(logging.INFO, logger="test"):
        second = data_cache.load(SMALL, seed=7, keras_cache_url=None, loss="sparse_categorical_crossentropy", log=LOG)
    assert "read from this node's cache" in caplog.text
    same(first, second)
    assert isinstance(second.x_train, np.memmap) and not second.x_train.flags.writeable  # mapped, not read twice
    other = data_cache.load(SMALL, seed=8, keras_cache_url=None, loss="sparse_categorical_crossentropy", log=LOG)
    assert len(list(cache.iterdir())) == 2  # another seed, other arrays
    assert not np.array_equal(other.x_train, first.x_train)


def test_an_npz_changed_in_place_is_loaded_afresh(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    x, y = np.zeros((10, 4, 4, 1), np.uint8), np.arange(10) % 2
    np.savez(path, x_train=x, y_train=y)
    spec = NpzData(kind="npz", url=str(path))
    first = data_cache.load(spec, seed=1, keras_cache_url=None, loss=None, log=LOG)
    np.savez(path, x_train=x + 7, y_train=y)
    os.utime(path, (1, 1))  # a different modification time, as a rewrite gives
    second = data_cache.load(spec, seed=1, keras_cache_url=None, loss=None, log=LOG)
    assert not np.array_equal(first.x_train, second.x_train)


def test_an_image_folder_is_not_cached_and_the_cache_keeps_a_few_sets(cache: Path) -> None:
    folder = ImageFolderData(kind="image_folder", url="/nonexistent", image_size=(8, 8))
    assert data_cache.fingerprint(folder, seed=1, loss=None, keras_cache_url=None) is None
    for seed in range(data_cache.KEEP + 2):
        data_cache.load(SMALL, seed=seed, keras_cache_url=None, loss=None, log=LOG)
    assert len(list(cache.iterdir())) == data_cache.KEEP


def test_a_damaged_copy_is_loaded_afresh(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = data_cache.load(SMALL, seed=7, keras_cache_url=None, loss=None, log=LOG)
    [folder] = cache.iterdir()
    (folder / "x_train.npy").write_bytes(b"not an array")
    with caplog.at_level(logging.WARNING, logger="test"):
        again = data_cache.load(SMALL, seed=7, keras_cache_url=None, loss=None, log=LOG)
    assert "unreadable" in caplog.text
    same(first, again)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test"):
        data_cache.load(SMALL, seed=7, keras_cache_url=None, loss=None, log=LOG)
    assert "read from this node's cache" in caplog.text  # the damaged copy was replaced
