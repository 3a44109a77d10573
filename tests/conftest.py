"""Fixtures shared by every test: an isolated store per test, never the user's real one."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes ~/.orchestrator, the developer's $ORCHESTRATOR_STORE or their config file."""
    monkeypatch.setenv("ORCHESTRATOR_STORE", str(tmp_path / "default-store"))
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", "")  # empty: no config file (tests that need one set it)


@pytest.fixture(params=["file", "memory"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store root on a real local folder and on fsspec's in-memory filesystem."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    return f"memory://store-{uuid.uuid4().hex}"


def quickstart_raw() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((JOBS / "quickstart.yaml").read_text())
    return loaded


def write_spec(folder: Path, raw: dict[str, Any], filename: str = "job.yaml") -> Path:
    path = folder / filename
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
