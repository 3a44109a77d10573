"""docs/spec.md cannot drift from the spec's models: every field of every model (the recipes, data kinds and
optimizers included) is documented in its section, and every field a section's table lists still exists."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator.spec import JobSpec, PhaseSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "spec.md"
TOP = "Top level"


def sections() -> dict[str, str]:
    """The text under each ``## `` heading, by its first word (``phases (transfer learning)`` -> ``phases``)."""
    parts = re.split(r"^## (.+)$", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {title.split(" (")[0].strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, unions, lists and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += models_in(arg)
    return found


def fields_under(model: type[BaseModel], elsewhere: set[type[BaseModel]]) -> set[str]:
    """Every field name of ``model`` and of the models nested in it, except models documented in another section
    (a phase's ``optimizer`` is documented under ``## optimizer``)."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for nested in models_in(info.annotation):
            if nested not in elsewhere:
                names |= fields_under(nested, elsewhere)
    return names


def section_models(field: str) -> list[type[BaseModel]]:
    return models_in(JobSpec.model_fields[field].annotation)


def documented(text: str) -> set[str]:
    """Names in backticks (`` `name` ``) and keys written as in YAML (``name:``, in code spans and examples)."""
    return set(re.findall(r"`([a-z_0-9]+)`", text)) | set(re.findall(r"\b([a-z_0-9]+):", text))


def table_fields(text: str) -> set[str]:
    """The names in the first column of a ``| field | default | meaning |`` table (other tables list values)."""
    table = re.search(r"^\| field \| default \| meaning \|\n((?:\|.*\n?)+)", text, flags=re.MULTILINE)
    return set(re.findall(r"^\| `([a-z_0-9]+)` \|", table.group(1), flags=re.MULTILINE)) if table else set()


def test_every_top_level_field_has_a_row_and_every_row_a_field() -> None:
    assert table_fields(sections()[TOP]) == set(JobSpec.model_fields)


@pytest.mark.parametrize("field", sorted(set(JobSpec.model_fields) - {"name", "loss", "metrics", "epochs"}))
def test_every_nested_field_is_documented_in_its_section(field: str) -> None:
    models = section_models(field)
    if not models:
        return  # a plain value: its row in the top-level table is its documentation
    text = sections()[field]
    elsewhere = {m for other in JobSpec.model_fields if other != field for m in section_models(other)}
    wanted = set().union(*(fields_under(m, elsewhere - set(models)) for m in models))
    missing = sorted(wanted - documented(text))
    assert not missing, f"docs/spec.md, ## {field}: not documented: {missing}"
    listed = table_fields(text)
    if listed:  # a field table: nothing in it that the model no longer has
        assert listed <= wanted, f"docs/spec.md, ## {field}: no such field: {sorted(listed - wanted)}"


def test_the_phases_table_is_the_phase_model() -> None:
    assert table_fields(sections()["phases"]) == set(PhaseSpec.model_fields)
