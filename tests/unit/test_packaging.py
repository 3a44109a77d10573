"""The distribution: its free name, the command and import name it keeps, its extras, license, type marker and
version."""

from __future__ import annotations

import tomllib
from importlib import metadata
from typing import Any

import pytest

import orchestrator
from tests.conftest import REPO


def pyproject() -> dict[str, Any]:
    loaded: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
    return loaded


def test_the_distribution_has_a_free_name_and_keeps_the_command_and_the_import_name() -> None:
    project = pyproject()["project"]
    assert project["name"] == orchestrator.DISTRIBUTION == "spot-orchestrator"
    assert project["scripts"] == {"orchestrator": "orchestrator.cli:main"}
    assert pyproject()["tool"]["setuptools"]["packages"]["find"]["include"] == ["orchestrator*"]


def test_the_license_the_type_marker_and_the_package_data_that_ships_it() -> None:
    project = pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License\n                           Version 2.0" in (REPO / "LICENSE").read_text()
    assert (REPO / "orchestrator" / "py.typed").is_file()
    assert "py.typed" in pyproject()["tool"]["setuptools"]["package-data"]["orchestrator"]
    assert "Typing :: Typed" in project["classifiers"]


def test_python_versions_agree_between_requires_python_and_the_classifiers() -> None:
    project = pyproject()["project"]
    assert project["requires-python"] == ">=3.11,<3.14"
    prefix = "Programming Language :: Python :: 3."
    minors = [c.removeprefix(prefix) for c in project["classifiers"] if c.startswith(prefix)]
    assert minors == ["11", "12", "13"]


def test_extras_s3_beside_gcsfs_and_dev_apart_from_what_the_tests_need() -> None:
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    assert any(d.startswith("gcsfs") for d in project["dependencies"])
    assert [d.split(">")[0] for d in extras["s3"]] == ["s3fs"]
    assert "pytest>=8" in extras["test"]
    assert not [d for d in extras["test"] if d.startswith(("ruff", "mypy", "types-"))], "lint tools belong in dev"
    assert "spot-orchestrator[test]" in extras["dev"]
    assert {"ruff", "mypy"} <= {d.split(">")[0] for d in extras["dev"]}
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install --quiet -e '.[dev]'" in ci, "CI runs ruff and mypy: it installs the dev extra"


def test_version_comes_from_the_installed_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def version(name: str) -> str:
        asked.append(name)
        return "9.8.7"

    monkeypatch.setattr(metadata, "version", version)
    assert orchestrator._version() == "9.8.7"
    assert asked == ["spot-orchestrator"]


def test_version_falls_back_to_pyproject_in_a_source_tree_that_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert orchestrator._version() == pyproject()["project"]["version"]
