"""Write k8s/constraints.txt: the exact versions the image installs.

Every distribution the orchestrator needs (its dependencies, with their extras, followed through this
environment's installed metadata) at the version installed here, where the tests ran; and the CUDA wheels of
``tensorflow[and-cuda]`` at the lower bounds TensorFlow states, the CUDA and cuDNN it was built against (the
newest allowed ones are 1.4 GB bigger). Run it from the repository root, in the environment the tests use:

    python k8s/constraints.py > k8s/constraints.txt
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
HEADER = """\
# The exact versions k8s/Dockerfile installs (pip install -c): what the tests ran with, and the CUDA wheels of
# tensorflow[and-cuda] at the versions TensorFlow was built against. Made by `python k8s/constraints.py`."""


def installed_pins() -> dict[str, str]:
    """The installed version of every distribution the orchestrator's dependencies pull in."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(text) for text in dependencies]
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(requirement.name)
        pins[key[0]] = dist.version
        environments = [{"extra": extra} for extra in (requirement.extras or {""})]
        for text in dist.requires or []:
            needed = Requirement(text)
            if needed.marker is None or any(needed.marker.evaluate(env) for env in environments):
                todo.append(needed)
    return pins


def cuda_pins() -> dict[str, str]:
    """The lower bound of each requirement of ``tensorflow[and-cuda]`` (the nvidia-*-cu12 wheels)."""
    pins = {}
    for text in metadata.requires("tensorflow") or []:
        requirement = Requirement(text)
        if requirement.marker is not None and requirement.marker.evaluate({"extra": "and-cuda"}):
            lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
            if len(lower) != 1 or not re.fullmatch(r"[\d.]+", lower[0]):
                raise SystemExit(f"tensorflow[and-cuda] needs {text}: no single lower bound to pin")
            pins[canonicalize_name(requirement.name)] = lower[0]
    return pins


def main() -> None:
    pins = {**installed_pins(), **cuda_pins()}
    pins.pop("spot-orchestrator", None)
    sys.stdout.write(HEADER + "\n" + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))


if __name__ == "__main__":
    main()
