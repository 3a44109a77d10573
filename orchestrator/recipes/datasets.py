"""Data sources a spec can name, loaded into numpy arrays (no TensorFlow here).

Every source returns a ``Dataset``: images as ``(N, H, W, C)`` and integer class labels ``(N,)``. One-hot
labels in a file are turned back into integers; the input pipeline encodes labels as the loss needs.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import fsspec
import numpy as np

from orchestrator.errors import DataError
from orchestrator.spec import KERAS_DATASETS, KerasData, NpzData, SyntheticData


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    x_test: np.ndarray | None = None  # a held-out test split, evaluated once after training
    y_test: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])


def synthetic(spec: SyntheticData, seed: int) -> Dataset:
    """Class-conditional images: a smooth random prototype per class, shifted at random, plus pixel noise.

    Learnable (a small CNN is far above chance after an epoch and keeps improving for several; the random
    circular shift of up to ``max_shift`` pixels puts each class's pattern at varying positions), and identical
    for the same seed on every machine, so every worker generates the same set without shipping it.
    """
    height, width, channels = spec.image_shape
    prototype_rng = np.random.default_rng([seed, 0x5EED])
    prototypes = _smooth(prototype_rng.normal(size=(spec.num_classes, height, width, channels)))
    prototypes /= prototypes.std(axis=(1, 2, 3), keepdims=True) + 1e-8

    def split(size: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, stream])
        labels = rng.integers(0, spec.num_classes, size=size).astype(np.int32)
        images = _shift(prototypes[labels], rng, spec.max_shift)
        images += spec.noise * rng.standard_normal((size, height, width, channels))
        return images.astype(np.float32), labels

    x_train, y_train = split(spec.train_examples, 1)
    x_val, y_val = split(spec.validation_examples, 2)
    x_test, y_test = split(spec.test_examples, 3) if spec.test_examples else (None, None)
    return Dataset(x_train, y_train, x_val, y_val, spec.num_classes, x_test, y_test)


def _shift(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Roll each image by its own random (dy, dx) in [-max_shift, max_shift] (wrapping at the edges)."""
    if max_shift == 0:
        return images.copy()
    count, height, width = images.shape[:3]
    dy, dx = rng.integers(-max_shift, max_shift + 1, size=(2, count))
    rows = (np.arange(height)[None, :] - dy[:, None]) % height
    cols = (np.arange(width)[None, :] - dx[:, None]) % width
    return images[np.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _smooth(images: np.ndarray, passes: int = 2) -> np.ndarray:
    """A separable 3x3 box blur, ``passes`` times: gives prototypes spatial structure for convolutions."""
    out = images
    for _ in range(passes):
        padded = np.pad(out, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
        total = np.zeros_like(out)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                total += padded[:, 1 + dy : 1 + dy + out.shape[1], 1 + dx : 1 + dx + out.shape[2]]
        out = total / 9.0
    return out


def npz(spec: NpzData) -> Dataset:
    """Load ``x_train``/``y_train`` (and ``x_val``/``y_val`` if present) from an ``.npz`` at any fsspec URL."""
    try:
        with fsspec.open(spec.url, "rb") as handle:
            content = handle.read()
    except FileNotFoundError:
        raise DataError(
            f"data.url: {spec.url} does not exist",
            hint="point data.url at an .npz with x_train and y_train (and optionally x_val, y_val)",
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"data.url: cannot read {spec.url}: {exc}") from exc
    try:
        arrays = dict(np.load(io.BytesIO(content), allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise DataError(f"data.url: {spec.url} is not a readable .npz file ({exc})") from exc
    return from_arrays(arrays, source=spec.url, validation_split=spec.validation_split)


def check_npz_reachable(spec: NpzData) -> None:
    """Raise a DataError now if the spec's .npz cannot be found (the driver calls this before workers start)."""
    try:
        fs, path = fsspec.core.url_to_fs(spec.url)
        exists = fs.exists(path)
    except (ImportError, OSError, ValueError) as exc:
        raise DataError(f"data.url: cannot reach {spec.url}: {exc}") from exc
    if not exists:
        raise DataError(
            f"data.url: {spec.url} does not exist",
            hint="point data.url at an .npz with x_train and y_train (and optionally x_val, y_val)",
        )


def from_arrays(
    arrays: dict[str, np.ndarray], *, source: str, validation_split: float, num_classes: int | None = None
) -> Dataset:
    """Check and normalise raw arrays: channel axis, integer labels, a validation split if none is given."""
    missing = [key for key in ("x_train", "y_train") if key not in arrays]
    if missing:
        raise DataError(
            f"{source}: missing arrays {', '.join(missing)}; found {', '.join(sorted(arrays)) or 'none'}",
            hint="an .npz for a job holds x_train, y_train and optionally x_val, y_val",
        )
    x_train, y_train = _images(arrays["x_train"], source, "x_train"), _labels(arrays["y_train"])
    if len(x_train) != len(y_train):
        raise DataError(f"{source}: x_train has {len(x_train)} examples but y_train has {len(y_train)}")
    if "x_val" in arrays and "y_val" in arrays:
        x_val, y_val = _images(arrays["x_val"], source, "x_val"), _labels(arrays["y_val"])
    elif validation_split > 0:
        keep = len(x_train) - round(len(x_train) * validation_split)
        x_train, x_val, y_train, y_val = x_train[:keep], x_train[keep:], y_train[:keep], y_train[keep:]
    else:
        x_val, y_val = x_train[:0], y_train[:0]
    x_test = y_test = None
    if "x_test" in arrays and "y_test" in arrays:
        x_test, y_test = _images(arrays["x_test"], source, "x_test"), _labels(arrays["y_test"])
    classes = num_classes or int(max(y_train.max(initial=0), y_val.max(initial=0))) + 1
    return Dataset(x_train, y_train, x_val, y_val, max(classes, 2), x_test, y_test)


def _images(x: np.ndarray, source: str, key: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise DataError(f"{source}: {key} has shape {x.shape}; expected (N, H, W) or (N, H, W, C) images")
    return x


def _labels(y: np.ndarray) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] > 1:
        return np.asarray(y.argmax(axis=1), dtype=np.int32)
    return np.asarray(y.reshape(-1), dtype=np.int32)


def keras_dataset(spec: KerasData) -> dict[str, np.ndarray]:
    """Download a ``keras.datasets`` set (needs internet); returns train/test arrays for caching as .npz."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras

    loader = getattr(tf_keras.datasets, spec.name)
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as exc:  # urllib, socket and http errors differ by platform; all mean "no download"
        raise DataError(
            f"data.name: could not download keras dataset {spec.name!r} ({type(exc).__name__}: {exc})",
            hint="without internet, save the arrays as an .npz (x_train, y_train, x_val, y_val) and use "
            "data: {kind: npz, url: path/or/url.npz}",
        ) from exc
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def load(spec: SyntheticData | NpzData | KerasData, *, seed: int, keras_cache_url: str | None = None) -> Dataset:
    """Load the spec's data; a ``keras`` set is read from its cached ``.npz`` (``prepare_keras_cache``)."""
    if isinstance(spec, SyntheticData):
        return synthetic(spec, seed)
    if isinstance(spec, NpzData):
        return npz(spec)
    if keras_cache_url is None:
        raise DataError(f"data.name: keras dataset {spec.name!r} has not been cached in the store yet")
    cached = npz(NpzData(kind="npz", url=keras_cache_url, validation_split=spec.validation_split))
    if spec.validation_split == 0 and cached.x_test is not None and cached.y_test is not None:
        # no split asked for: the set's own test split is the validation data (and there is no test split)
        return Dataset(cached.x_train, cached.y_train, cached.x_test, cached.y_test, KERAS_DATASETS[spec.name])
    return Dataset(cached.x_train, cached.y_train, cached.x_val, cached.y_val, KERAS_DATASETS[spec.name],
                   cached.x_test, cached.y_test)  # fmt: skip


def prepare_keras_cache(spec: KerasData, cache_url: str) -> bool:
    """Download a keras dataset once into ``cache_url`` (an .npz in the store); False if it was already there."""
    fs, path = fsspec.core.url_to_fs(cache_url)
    if fs.exists(path):
        return False
    arrays = keras_dataset(spec)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}"
    fs.pipe_file(partial, buffer.getvalue())
    fs.mv(partial, path)  # appears complete or not at all: a killed download never poisons the cache
    return True
