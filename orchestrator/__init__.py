"""orchestrator: distributed TensorFlow training on preemptible (spot) Ray clusters.

The public Python API (docs/python-api.md)::

    import orchestrator

    job = orchestrator.run(orchestrator.load_spec("jobs/quickstart.yaml", epochs=3))
    job.history()                                   # a pandas DataFrame
    orchestrator.job("quickstart").set_lr(3e-4)     # from any process

``load_spec``, ``run``, ``submit``, ``job``, ``run_sweep`` and ``Job`` are loaded from ``orchestrator.api`` on
first use, so that ``import orchestrator`` stays light (no TensorFlow, no Ray: running a job imports them).
Every other module is private by convention.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.api import Job, job, load_spec, run, run_sweep, submit

__all__ = ["Job", "__version__", "job", "load_spec", "run", "run_sweep", "submit"]
_API = {"Job", "job", "load_spec", "run", "run_sweep", "submit"}

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


def __getattr__(name: str) -> Any:
    """The API's names, imported from ``orchestrator.api`` the first time one is used (PEP 562)."""
    if name in _API:
        from orchestrator import api

        return getattr(api, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
