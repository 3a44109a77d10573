"""orchestrator: distributed TensorFlow training on preemptible (spot) Ray clusters."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "spot-orchestrator"  # the name pip knows it by (`orchestrator` on PyPI is another project)


def _version() -> str:
    """The installed distribution's version; in a source tree that is not installed, pyproject.toml's."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    try:
        project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text("utf-8"))
        found = project["project"]["version"] if project["project"]["name"] == DISTRIBUTION else None
    except (OSError, ValueError, KeyError, TypeError):
        found = None
    return found if isinstance(found, str) else "0+unknown"


__version__ = _version()
