"""Fixtures shared by every test: an isolated store per test, never the user's real one."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.notify_server import Inbox, inbox

pytest_plugins = ["tests.gcs"]  # the GCS emulator's fixtures, for the cloud tests and the store_url fixture

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes ~/.orchestrator, the developer's $ORCHESTRATOR_STORE or their config file."""
    monkeypatch.setenv("ORCHESTRATOR_STORE", str(tmp_path / "default-store"))
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", "")  # empty: no config file (tests that need one set it)


@pytest.fixture(params=["file", "memory", pytest.param("gs", marks=pytest.mark.cloud)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store root on a real local folder, on fsspec's in-memory filesystem, and on gs:// (a real
    GCS JSON API: the emulator of tests/gcs.py, skipped when it is not installed)."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    if request.param == "gs":
        url: str = request.getfixturevalue("gcs_store_url")
        return url
    return f"memory://store-{uuid.uuid4().hex}"


def quickstart_raw() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((JOBS / "quickstart.yaml").read_text())
    return loaded


def write_spec(folder: Path, raw: dict[str, Any], filename: str = "job.yaml") -> Path:
    path = folder / filename
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def seeded_delay(low: float, high: float, what: str) -> float:
    """A random delay in [low, high) seconds from a printed seed, so that a failure can be replayed: pytest shows
    the print with the failure, and ``KILL_SEED=<seed>`` in the environment gives the same delay again."""
    seed = int(os.environ.get("KILL_SEED") or time.time_ns() % 2**32)
    delay = random.Random(seed).uniform(low, high)
    print(f"{what} after {delay:.3f} s (KILL_SEED={seed} replays this delay)", flush=True)
    return delay


@pytest.fixture
def notify_inbox() -> Iterator[Inbox]:
    """A real HTTP endpoint on 127.0.0.1 for apprise's ``json://`` notifications (skipped without apprise)."""
    pytest.importorskip("apprise", reason="the notify extra: pip install -e '.[test]' installs apprise")
    with inbox() as box:
        yield box
