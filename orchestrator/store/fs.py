"""A store root on any fsspec URL, and how bytes go in and out of it: opening the URL (without a 15 s wait for a
metadata server off Google Cloud), failing in seconds for an endpoint that cannot be reached, atomic writes,
exclusive creates, and reading a record back with a one-line error naming the file.

Writes are atomic: a local file is written beside its target and renamed over it; an object store (gs://,
s3://, memory://) replaces an object in one put. A reader never sees half a file.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ValidationError

from orchestrator.errors import OrchestratorError, StoreError, UsageError
from orchestrator.reach import host_port, unreachable
from orchestrator.spec import JOB_NAME_PATTERN, JOB_NAME_RULE
from orchestrator.user_config import load_config

STORE_ENV = "ORCHESTRATOR_STORE"
DEFAULT_STORE = Path.home() / ".orchestrator" / "store"

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)


def default_store_url(option: str | None = None) -> str:
    """The store root: ``--store``, else ``$ORCHESTRATOR_STORE``, else the config file's ``store``, else
    ``~/.orchestrator/store``."""
    return option or os.environ.get(STORE_ENV) or load_config().store or str(DEFAULT_STORE)


def file_digest(path: str) -> tuple[int, str]:
    """Size and sha256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def validate_job_name(name: str) -> str:
    if not re.fullmatch(JOB_NAME_PATTERN, name):
        raise UsageError(f"job name: got {name!r}, must be {JOB_NAME_RULE}")
    return name


def describe_invalid(exc: ValidationError) -> str:
    """What is wrong with a record, in a few words: ``metrics.loss: Input should be a valid number``."""
    problem = exc.errors()[0]
    where = ".".join(str(part) for part in problem["loc"])
    message = problem["msg"].replace("Invalid JSON: ", "not valid JSON: ")
    return f"{where}: {message}" if where else message


DAMAGED_FILE = (
    "the file was damaged, or written by another version of orchestrator: restore it from a copy, or move it out "
    "of the store"
)
DAMAGED_LINE = (
    "the line was damaged, or written by another version of orchestrator: restore the file from a copy, or delete "
    "that line"
)


def _on_google_cloud() -> bool:
    """Whether this machine may have a Google metadata server: a GCE VM (its firmware says Google), or one named
    in the environment. The test google-auth makes itself, without the network (``detect_gce_residency_linux``)."""
    if any(os.environ.get(key) for key in ("GCE_METADATA_HOST", "GCE_METADATA_ROOT", "GCE_METADATA_IP")):
        return True
    try:
        return Path("/sys/class/dmi/id/product_name").read_text().strip().startswith("Google")
    except OSError:
        return False


@contextmanager
def _no_metadata_server_credentials(url: str) -> Iterator[None]:
    """gcsfs looks for credentials in turn: Application Default Credentials, its token cache, the metadata server
    ("cloud"), anonymous. Off Google Cloud, its "cloud" step retries a metadata server that is not there for about
    15 s (5 attempts with backoff) before every gs:// command falls back to anonymous access: skipped there, as
    gcsfs skips it under ``NO_GCE_CHECK=true``. ADC (``gcloud auth application-default login``, a service account
    key) is found first as before; a user's own ``NO_GCE_CHECK`` (even ``false``) is left as it is.

    The variable is set only while the filesystem is made: google-auth, imported before, read its own copy at
    import, so its metadata server detection for ADC is unchanged."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("gs", "gcs") or "NO_GCE_CHECK" in os.environ or _on_google_cloud():
        yield
        return
    import gcsfs  # noqa: F401  # imports google.auth's metadata module (which reads NO_GCE_CHECK once) first

    os.environ["NO_GCE_CHECK"] = "true"
    try:
        yield
    finally:
        os.environ.pop("NO_GCE_CHECK", None)


def _http_endpoint(fs: Any) -> str | None:
    """The URL gcsfs sends a gs:// store's requests to (Google's, or ``$STORAGE_EMULATOR_HOST``); ``None`` for other
    filesystems, or a gcsfs session through a proxy or a connector of the user's (where a direct probe says
    nothing)."""
    location = getattr(fs, "_location", None) if "gs" in getattr(fs, "protocol", ()) else None
    session_kwargs = getattr(fs, "session_kwargs", None) or {}
    if not isinstance(location, str) or session_kwargs.get("trust_env") or "connector" in session_kwargs:
        return None
    return location


def _store_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Turn a filesystem failure (network, permission, bad bucket) into a StoreError naming the store."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (OrchestratorError, FileNotFoundError):
            raise
        except ValidationError as exc:  # records read through _read_model/_read_lines name their file already
            store = args[0]
            url = store.url if isinstance(store, StoreFiles) else "?"
            raise StoreError(f"store {url}: a {exc.title} record is invalid ({describe_invalid(exc)})") from exc
        except Exception as exc:  # every backend (gcsfs, s3fs, ...) has its own error classes: all mean "store"
            store = args[0]
            url = store.url if isinstance(store, StoreFiles) else "?"
            raise StoreError(
                f"store {url}: {type(exc).__name__}: {exc}",
                hint="check the URL and credentials, or pick another store with --store or $" + STORE_ENV,
            ) from exc

    return wrapper


class StoreFiles:
    """A store root on any fsspec URL (``file://``, a plain path, ``gs://``, ``s3://``, ``memory://``): its paths and
    the primitives every record's reads and writes are made of (:class:`orchestrator.store.JobStore` adds the
    records)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.last_fetch_local = 0  # files the last fetch_backup took from a local copy instead of the store
        try:
            with _no_metadata_server_credentials(url):
                self.fs, root = fsspec.core.url_to_fs(url)
        except ImportError as exc:
            raise StoreError(
                f"store {url}: cannot open it ({exc})",
                hint="install the filesystem package it names (pip install s3fs for s3://), or use a local folder",
            ) from exc
        except ValueError as exc:
            raise StoreError(
                f"store {url}: cannot open it ({exc})",
                hint="use a local folder, file://, gs://, s3:// or memory:// URL",
            ) from exc
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def check_reachable(self) -> None:
        """Fail in seconds, naming the store and its endpoint, when an object store over HTTP (``gs://``) cannot be
        reached for certain (an unknown host, a refused connection), where gcsfs would retry for about 33 s per
        read; an endpoint that does not answer is waited for, saying so, up to ``reach.WAIT_S``.

        Raises:
            StoreError: the endpoint cannot be reached.
        """
        endpoint = _http_endpoint(self.fs)
        target = host_port(endpoint) if endpoint else None
        if endpoint is None or target is None:
            return
        why = unreachable(*target, f"store {self.url} (its endpoint {endpoint})")
        if why is None:
            return
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        hint = (
            f"start the emulator at $STORAGE_EMULATOR_HOST ({emulator}), or unset it to use Google Cloud Storage"
            if emulator and emulator != "default"
            else "check this machine's network (and a firewall or proxy in the way), or pick another store with "
            f"--store or ${STORE_ENV}"
        )
        raise StoreError(f"store {self.url}: cannot reach {endpoint}: {why}", hint=hint)

    # ------------------------------------------------------------------------------------------ paths
    def job_dir(self, name: str) -> str:
        return f"{self.root}/jobs/{validate_job_name(name)}"

    def path(self, name: str, *parts: str) -> str:
        return "/".join((self.job_dir(name), *parts))

    def url_of(self, name: str, *parts: str) -> str:
        """A full URL (with scheme) for a path in a job's folder, for code that talks to fsspec itself."""
        path = self.path(name, *parts)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    # ---------------------------------------------------------------------------------------- files
    @_store_errors
    def upload_file(self, name: str, local_path: str, *parts: str) -> str:
        """Copy a local file into the job's folder; it appears under its name only once complete."""
        target = self.path(name, *parts)
        if self.is_local:
            with self._local_temp_beside(target) as temp:
                shutil.copyfile(local_path, temp)
                os.replace(temp, target)
        else:
            self.fs.put_file(local_path, target)
        return self.url_of(name, *parts)

    @_store_errors
    def download_file(self, name: str, local_path: str, *parts: str) -> None:
        """Copy a file of the job's folder to ``local_path``."""
        self.fs.get_file(self.path(name, *parts), local_path)

    def dataset_cache_url(self, dataset: str) -> str:
        """Where a downloaded public dataset is cached, shared by every job of this store."""
        path = f"{self.root}/datasets/{dataset}.npz"
        return path if self.is_local else self.fs.unstrip_protocol(path)

    # --------------------------------------------------------------------------------- primitives
    def _create_exclusive(self, path: str, record: BaseModel) -> bool:
        """Write ``path`` only if it does not exist (atomically); False when another writer got there first."""
        data = record.model_dump_json(indent=2).encode()
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with self._local_temp_beside(path) as temp:
                Path(temp).write_bytes(data)
                try:
                    os.link(temp, path)  # atomic, and fails if the name is taken: complete content or nothing
                except FileExistsError:
                    return False
            return True
        try:
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def _names_in(self, folder: str) -> list[str]:
        """The names of the entries of ``folder`` (listed afresh), sorted; none for a folder not there."""
        try:
            entries = self.fs.ls(folder, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries)

    def _read_folder(self, folder: str, model: type[M]) -> list[M]:
        try:
            files = sorted(str(f) for f in self.fs.ls(folder, detail=False, refresh=True))
        except FileNotFoundError:
            return []
        return [self._read_model(f, model) for f in files if f.endswith(".json") and "/.tmp-" not in f]

    def _read_model(self, path: str, model: type[M]) -> M:
        data = self._read_bytes(path)
        try:
            return model.model_validate_json(data)
        except ValidationError as exc:
            problem = describe_invalid(exc)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 text (byte {exc.start + 1})"
        raise StoreError(f"store {self.url}: {self._relative(path)} is unreadable ({problem})", hint=DAMAGED_FILE)

    def _relative(self, path: str) -> str:
        """A path inside the store as a person finds it there: ``jobs/<job>/history.jsonl``."""
        return path.removeprefix(self.root).lstrip("/")

    def _write_model(self, path: str, value: BaseModel) -> None:
        self._write_bytes(path, value.model_dump_json(indent=2).encode())

    def _read_bytes(self, path: str) -> bytes:
        data: bytes = self.fs.cat_file(path)
        return data

    def _write_bytes(self, path: str, data: bytes) -> None:
        if self.is_local:
            with self._local_temp_beside(path) as temp:
                Path(temp).write_bytes(data)
                os.replace(temp, path)
        else:
            self.fs.pipe_file(path, data)

    @contextmanager
    def _local_temp_beside(self, path: str) -> Iterator[str]:
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
        os.close(fd)
        try:
            yield temp
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
