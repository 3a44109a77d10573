"""Data sources a spec can name, loaded into numpy arrays (no TensorFlow here).

Every source returns a ``Dataset``: images as ``(N, H, W, C)`` and integer class labels ``(N,)``. One-hot
labels in a file are turned back into integers; the input pipeline encodes labels as the loss needs.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from orchestrator.errors import DataError
from orchestrator.spec import KERAS_DATASETS, ImageFolderData, KerasData, NpzData, SyntheticData


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    x_test: np.ndarray | None = None  # a held-out test split, evaluated once after training
    y_test: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None  # label i is class_names[i], for sources that name their classes

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


def npz(spec: NpzData, *, loss: str | None = None) -> Dataset:
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
    return from_arrays(arrays, source=spec.url, validation_split=spec.validation_split, loss=loss)


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
    arrays: dict[str, np.ndarray],
    *,
    source: str,
    validation_split: float,
    num_classes: int | None = None,
    loss: str | None = None,
) -> Dataset:
    """Check and normalise raw arrays: channel axis, integer labels, a validation split if none is given.

    Under ``loss: binary_crossentropy`` every label must be 0 or 1.
    """
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
    if loss == "binary_crossentropy":
        _check_binary_labels(source, {"y_train": y_train, "y_val": y_val, "y_test": y_test})
    return Dataset(x_train, y_train, x_val, y_val, max(classes, 2), x_test, y_test)


def _images(x: np.ndarray, source: str, key: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise DataError(f"{source}: {key} has shape {x.shape}; expected (N, H, W) or (N, H, W, C) images")
    return x


def _check_binary_labels(source: str, labels: dict[str, np.ndarray | None]) -> None:
    for key, y in labels.items():
        if y is not None and len(y) and (y.min() < 0 or y.max() > 1):
            found = np.unique(y)
            shown = ", ".join(str(v) for v in found[:6]) + (", ..." if len(found) > 6 else "")
            raise DataError(
                f"{source}: {key} has labels {shown}; loss binary_crossentropy needs labels 0 and 1 (2 classes)",
                hint="use loss categorical_crossentropy or sparse_categorical_crossentropy for more classes",
            )


def _labels(y: np.ndarray) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] > 1:
        return np.asarray(y.argmax(axis=1), dtype=np.int32)
    return np.asarray(y.reshape(-1), dtype=np.int32)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
IMAGE_FOLDER_LAYOUT = "train/<class>/*.jpg, val/<class>/*.jpg and optionally test/<class>/*.jpg"
READ_THREADS = 8  # reading from a cloud store is bound by latency, not by bandwidth or CPU


def image_folder(spec: ImageFolderData, *, loss: str | None = None) -> Dataset:
    """Read every image under ``train/``, ``val/`` (and ``test/``) into ``uint8`` arrays ``(N, H, W, C)``.

    Labels are class indices in the sorted folder names of ``train/``; examples are in the order of their
    class, then their path, so every worker loads the same arrays. Each image is converted to RGB or
    greyscale and resized (bilinear) to ``image_size`` as it is read, so memory holds only the final size.

    Example::

        data = image_folder(ImageFolderData(kind="image_folder", url="gs://bucket/flowers", image_size=(224, 224)))
        data.class_names  # ('daisy', 'rose', 'tulip')
    """
    fs, root = _image_folder_root(spec.url)
    class_names = _class_folders(fs, root, "train", spec.url)
    if loss == "binary_crossentropy":
        _check_binary_classes(class_names, spec.url)
    splits = ["train", "val", *(["test"] if fs.isdir(f"{root}/test") else [])]
    files: dict[str, tuple[list[str], list[int]]] = {}
    for split in splits:
        names = _class_folders(fs, root, split, spec.url)
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise DataError(
                f"data.url: {_shown(spec.url, split)} has class folders that train/ does not have: "
                f"{_listed(unknown)}; val/ and test/ hold the classes of train/ ({_listed(class_names)}) or some "
                "of them"
            )
        files[split] = _split_files(fs, root, split, names, class_names, spec.url)
    arrays: dict[str, np.ndarray] = {}
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        for split, (paths, labels) in files.items():
            arrays[split] = _read_images(pool, fs, paths, root, spec)
            arrays[f"y_{split}"] = np.asarray(labels, dtype=np.int32)
    return Dataset(
        arrays["train"],
        arrays["y_train"],
        arrays["val"],
        arrays["y_val"],
        len(class_names),
        arrays.get("test"),
        arrays.get("y_test"),
        class_names=class_names,
    )


def check_image_folder_reachable(spec: ImageFolderData, *, loss: str | None = None) -> tuple[str, ...]:
    """Raise a DataError now if the folder has no ``train/`` with 2+ class folders or no ``val/`` (the driver
    calls this before workers start); under ``binary_crossentropy`` there must be exactly 2 classes.

    Returns the class names. Only folders are listed: no image is read.
    """
    fs, root = _image_folder_root(spec.url)
    class_names = _class_folders(fs, root, "train", spec.url)
    if not fs.isdir(f"{root}/val"):
        raise _missing_split(spec.url, "val")
    if loss == "binary_crossentropy":
        _check_binary_classes(class_names, spec.url)
    return class_names


def _image_folder_root(url: str) -> tuple[Any, str]:
    try:
        fs, path = fsspec.core.url_to_fs(url)
        exists = fs.isdir(path)
    except (ImportError, OSError, ValueError) as exc:
        raise DataError(f"data.url: cannot reach {url}: {exc}") from exc
    if not exists:
        raise DataError(
            f"data.url: {url} is not a folder; expected one holding {IMAGE_FOLDER_LAYOUT}",
            hint="point data.url at the folder that holds train/ and val/",
        )
    return fs, path.rstrip("/")


def _class_folders(fs: Any, root: str, split: str, url: str) -> tuple[str, ...]:
    """Sorted names of the (not hidden) folders in ``split``; train/ must have at least two."""
    if not fs.isdir(f"{root}/{split}"):
        raise _missing_split(url, split)
    entries = fs.ls(f"{root}/{split}", detail=True)
    names = sorted(
        name
        for name in (entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in entries if entry["type"] == "directory")
        if not name.startswith(".")
    )
    if split == "train" and len(names) < 2:
        found = f"only {_listed(names)}" if names else "none"
        raise DataError(
            f"data.url: {_shown(url, split)} has {len(names)} class folders ({found}); expected one folder per "
            "class, at least 2",
            hint=f"lay the images out as {IMAGE_FOLDER_LAYOUT}",
        )
    return tuple(names)


def _missing_split(url: str, split: str) -> DataError:
    return DataError(
        f"data.url: {url} has no {split}/ folder; expected {IMAGE_FOLDER_LAYOUT}",
        hint="point data.url at the folder that holds train/ and val/",
    )


def _split_files(
    fs: Any, root: str, split: str, names: Sequence[str], class_names: Sequence[str], url: str
) -> tuple[list[str], list[int]]:
    """The image files of every class folder of ``split`` (also in sub-folders), with their labels."""
    paths: list[str] = []
    labels: list[int] = []
    for name in names:
        folder = f"{root}/{split}/{name}"
        images = sorted(
            path
            for path in fs.find(folder)
            if path.lower().endswith(IMAGE_SUFFIXES)
            and not any(part.startswith(".") for part in path[len(folder) + 1 :].split("/"))
        )
        if not images:
            raise DataError(
                f"data.url: {_shown(url, f'{split}/{name}')} has no images; expected files ending in "
                f"{', '.join(IMAGE_SUFFIXES)} (any case)",
                hint="remove the empty class folder or add its images",
            )
        paths += images
        labels += [class_names.index(name)] * len(images)
    return paths, labels


def _read_images(pool: ThreadPoolExecutor, fs: Any, paths: list[str], root: str, spec: ImageFolderData) -> np.ndarray:
    """Read and decode ``paths`` in parallel straight into one preallocated array."""
    height, width = spec.image_size
    images = np.empty((len(paths), height, width, spec.channels), dtype=np.uint8)

    def read(index: int) -> None:
        shown = _shown(spec.url, paths[index][len(root) + 1 :])
        try:
            content = fs.cat_file(paths[index])
        except (OSError, ValueError) as exc:
            raise DataError(f"data.url: cannot read {shown}: {exc}") from exc
        images[index] = _decode(content, spec, shown)

    futures = [pool.submit(read, index) for index in range(len(paths))]
    try:
        for future in futures:
            future.result()
    finally:
        for future in futures:
            future.cancel()  # after the first bad file, the rest are not read
    return images


def _decode(content: bytes, spec: ImageFolderData, shown: str) -> np.ndarray:
    from PIL import Image  # only image folders need Pillow

    height, width = spec.image_size
    try:
        with Image.open(io.BytesIO(content)) as opened:
            image = opened.convert("RGB" if spec.channels == 3 else "L")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"data.url: {shown} is not a readable image ({type(exc).__name__}: {exc})",
            hint="delete or replace the file (or hide it: names starting with '.' are skipped)",
        ) from exc
    return pixels.reshape(height, width, spec.channels)


def _check_binary_classes(class_names: Sequence[str], url: str) -> None:
    if len(class_names) != 2:
        raise DataError(
            f"loss binary_crossentropy needs 2 classes, but data.url has {len(class_names)} class folders "
            f"({_listed(class_names)}); use categorical_crossentropy or sparse_categorical_crossentropy",
            hint=f"data.url: {url}",
        )


def _shown(url: str, relative: str) -> str:
    return f"{url.rstrip('/')}/{relative}"


def _listed(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


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


def load(
    spec: SyntheticData | NpzData | KerasData | ImageFolderData,
    *,
    seed: int,
    keras_cache_url: str | None = None,
    loss: str | None = None,
) -> Dataset:
    """Load the spec's data; a ``keras`` set is read from its cached ``.npz`` (``prepare_keras_cache``).

    With ``loss``, labels that cannot serve it are a DataError naming the file (binary_crossentropy: 2 classes).
    """
    if isinstance(spec, SyntheticData):
        return synthetic(spec, seed)
    if isinstance(spec, NpzData):
        return npz(spec, loss=loss)
    if isinstance(spec, ImageFolderData):
        return image_folder(spec, loss=loss)
    if keras_cache_url is None:
        raise DataError(f"data.name: keras dataset {spec.name!r} has not been cached in the store yet")
    cached = npz(NpzData(kind="npz", url=keras_cache_url, validation_split=spec.validation_split))
    if spec.validation_split == 0 and cached.x_test is not None and cached.y_test is not None:
        # no split asked for: the set's own test split is the validation data (and there is no test split)
        return Dataset(cached.x_train, cached.y_train, cached.x_test, cached.y_test, KERAS_DATASETS[spec.name])
    return Dataset(
        cached.x_train,
        cached.y_train,
        cached.x_val,
        cached.y_val,
        KERAS_DATASETS[spec.name],
        cached.x_test,
        cached.y_test,
    )


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
