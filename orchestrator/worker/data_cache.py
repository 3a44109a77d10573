"""The job's arrays kept on the node's disk, so that a restarted worker reads them instead of making them again.

Every attempt of a job loads the same data: generating the synthetic set, or downloading and parsing an
``.npz``, took 4-12 s of a restart on a busy machine here, the largest part once TensorFlow's import had moved
to the warm pool. The first worker on a node to load a data set writes its arrays here (``.npy`` files, the
folder renamed into place only when complete, so no reader ever sees half of it); every later load on that
node, by any attempt or job with the same data, reads them back.

What is cached is keyed by everything the arrays depend on: the data spec, the job's seed and loss, and, for a
file at a URL, the file's size and modification time or ETag (a file changed in place is loaded afresh). A
folder of images is not cached (its fingerprint would mean listing every file). At most ``KEEP`` data sets are
kept per node, the least recently used removed first. ``$ORCHESTRATOR_CACHE`` (default
``~/.orchestrator/cache``) is the root, as for the node's backup copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from orchestrator.recipes import datasets
from orchestrator.spec import ImageFolderData, KerasData, NpzData, SyntheticData
from orchestrator.worker.backup_cache import CACHE_ENV

KEEP = 4
ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
DataSpec = SyntheticData | NpzData | KerasData | ImageFolderData


def _root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".orchestrator" / "cache") / "datasets"


def fingerprint(spec: DataSpec, *, seed: int, loss: str | None, keras_cache_url: str | None) -> str | None:
    """What the loaded arrays depend on, hashed; None where the data is not cached (an image folder)."""
    if isinstance(spec, ImageFolderData):
        return None
    source: dict[str, Any] = {}
    url = spec.url if isinstance(spec, NpzData) else keras_cache_url if isinstance(spec, KerasData) else None
    if url is not None:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
        source = {key: str(info.get(key)) for key in ("size", "mtime", "ETag", "etag", "md5Hash", "updated")}
        source["url"] = url
    key = {"spec": spec.model_dump(mode="json"), "seed": seed, "loss": loss, "source": source, "format": 1}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def load(
    spec: DataSpec, *, seed: int, keras_cache_url: str | None, loss: str | None, log: logging.Logger
) -> datasets.Dataset:
    """``datasets.load``, through the node's cache."""
    try:
        key = fingerprint(spec, seed=seed, loss=loss, keras_cache_url=keras_cache_url)
    except (OSError, ValueError):  # the source cannot be looked at: let the loader say why
        key = None
    if key is None:
        return datasets.load(spec, seed=seed, keras_cache_url=keras_cache_url, loss=loss)
    folder = _root() / key
    if (folder / "meta.json").is_file():
        started = time.monotonic()
        try:
            data = _read(folder)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("data: this node's cached copy %s is unreadable (%s); loading it afresh", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)  # replaced by the fresh load's copy below
        else:
            with contextlib.suppress(OSError):
                os.utime(folder)  # recently used
            log.info("data: read from this node's cache in %.2f s (%s)", time.monotonic() - started, folder)
            return data
    data = datasets.load(spec, seed=seed, keras_cache_url=keras_cache_url, loss=loss)
    try:
        _write(folder, data)
    except OSError as exc:  # a cache: training goes on without it
        log.warning("data: could not keep a copy on this node (%s)", exc)
    return data


def _read(folder: Path) -> datasets.Dataset:
    meta = json.loads((folder / "meta.json").read_text())
    # Mapped, not read: the training stream's tensor is then the one copy made of them (a full read first was a
    # second copy of up to hundreds of MB in every restart). The files are never changed in place; one removed
    # while mapped (the least recently used set, by another worker) stays readable until it is unmapped.
    arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False, mmap_mode="r") for name in meta["arrays"]}
    names = meta.get("class_names")
    return datasets.Dataset(
        x_train=arrays["x_train"],
        y_train=arrays["y_train"],
        x_val=arrays["x_val"],
        y_val=arrays["y_val"],
        num_classes=int(meta["num_classes"]),
        x_test=arrays.get("x_test"),
        y_test=arrays.get("y_test"),
        class_names=tuple(names) if names is not None else None,
    )


def _write(folder: Path, data: datasets.Dataset) -> None:
    """Write into a scratch folder beside ``folder``, then rename it into place (another worker may win)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        present = [name for name in ARRAYS if getattr(data, name) is not None]
        for name in present:
            np.save(scratch / f"{name}.npy", getattr(data, name), allow_pickle=False)
        meta = {"arrays": present, "num_classes": data.num_classes, "class_names": data.class_names}
        (scratch / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(scratch, folder)
        except OSError:  # another worker on this node got there first: its copy is the same
            shutil.rmtree(scratch, ignore_errors=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    _prune(folder.parent)


def _prune(root: Path) -> None:
    kept = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in kept[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
