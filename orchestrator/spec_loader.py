"""Read a YAML job spec and report every problem as one line with its file, line and YAML path."""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from orchestrator.errors import SpecError, UsageError
from orchestrator.spec import JOB_NAME_RULE, JobSpec, resolve_relative_paths

Loc = tuple[str | int, ...]

PATTERN_RULES: dict[Loc, str] = {
    ("name",): JOB_NAME_RULE,
    ("function",): "'path/to/file.py:function_name' (the path relative to the spec's folder)",
}


def is_sweep(raw: object) -> bool:
    """A sweep file's top level: ``sweep``, ``base`` and ``variants`` and no job field besides."""
    return isinstance(raw, dict) and "variants" in raw and "base" in raw and "name" not in raw


def load_spec(path: str | Path, *, name: str | None = None, overrides: list[str] | None = None) -> JobSpec:
    """Load, resolve and validate the spec at ``path``; ``name`` overrides the spec's own name, and each of
    ``overrides`` (``dotted.key=YAML value``, e.g. ``epochs=2`` or ``data={kind: synthetic}``) one field.

    Raises:
        SpecError: the file is missing, is not YAML, or breaks the schema (one line per problem).
    """
    path = Path(path)
    raw, lines = read_raw_spec(path)
    return build_spec(raw, source=str(path), base=path.parent.resolve(), lines=lines, name=name, overrides=overrides)


def read_raw_spec(path: Path) -> tuple[dict[str, Any], dict[Loc, int]]:
    """A job spec file's YAML mapping and the line of each of its keys (not yet validated).

    Raises:
        SpecError: the file is missing or not YAML. UsageError: it is a sweep, not a job spec.
    """
    raw, lines = parse_yaml(read_spec_text(path), str(path))
    if is_sweep(raw):
        raise UsageError(
            f"{path}: this is a sweep (sweep, base, variants), not a job spec",
            hint=f"run it with: orchestrator sweep {path}   (orchestrator validate checks it as a sweep)",
        )
    return raw, lines


def build_spec(
    raw: dict[str, Any],
    *,
    source: str,
    base: Path,
    lines: dict[Loc, int] | None = None,
    name: str | None = None,
    overrides: list[str] | None = None,
) -> JobSpec:
    """Validate a raw spec (relative paths taken from ``base``) after ``name`` and the ``overrides``."""
    if name is not None:
        raw = {**raw, "name": name}
    for override in overrides or []:
        raw = apply_override(raw, override)
    lines = lines or {}
    spec = validate_spec(resolve_relative_paths(raw, base), source=source, lines=lines)
    check_local_files(spec, source=source, lines=lines)
    return spec


def read_spec_text(path: Path) -> str:
    """The text of a spec (or sweep) file.

    Raises:
        SpecError: the file is missing, a folder, unreadable or not UTF-8 text.
    """
    if not path.is_file():
        if path.is_dir():
            raise SpecError(str(path), ["is a folder, not a spec file"], hint="give the path of a .yaml file in it")
        siblings = sorted(p.name for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        hint = f"specs in {path.parent}/: {', '.join(siblings)}" if siblings else None
        raise SpecError(str(path), ["file not found"], hint=hint)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), [f"not UTF-8 text (byte {exc.start}): save the spec as UTF-8"]) from None
    except OSError as exc:
        raise SpecError(str(path), [f"cannot be read: {exc.strerror or exc}"]) from None


def check_local_files(spec: JobSpec, *, source: str, lines: dict[Loc, int]) -> None:
    """The model's builder file (``model.function``) exists here: the workers would find out only after Ray started.

    Data and weights are checked before the workers start (they may be URLs, or folders being filled). Not for a
    spec rendered for Kubernetes: there the builder is in the image, not here.
    """
    problems = []
    for field, path in spec.local_files():
        if field == "model.function" and not Path(path).is_file():
            line = _nearest_line(("model", "function"), lines)
            what = "is a folder" if Path(path).is_dir() else "does not exist"
            problems.append(
                f"{'line ' + str(line) + ': ' if line else ''}{field}: the file {path} {what}; must be "
                "a Python file (a relative path is taken from the spec's folder)"
            )
    if problems:
        raise SpecError(source, problems)


def apply_override(raw: dict[str, Any], override: str) -> dict[str, Any]:
    """A copy of ``raw`` with ``dotted.key=value`` set (the value is YAML; a mapping replaces the whole field)."""
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise SpecError("--set", [f"got {override!r}, must be KEY=VALUE with a dotted key, e.g. epochs=2"])
    try:
        value, _ = load_yaml(text, "--set")
    except SpecError:
        raise SpecError("--set", [f"{key}: the value {text!r} is not YAML, or not a plain value"]) from None
    updated = dict(raw)
    node = updated
    for part in parts[:-1]:
        child = node.get(part)
        if child is not None and not isinstance(child, dict):
            raise SpecError("--set", [f"{key}: {part} is not a mapping in the spec, so it has no fields to set"])
        node[part] = dict(child or {})
        node = node[part]
    node[parts[-1]] = value
    return updated


MAX_DEPTH = 32  # a job spec is a few levels deep; far more is a mistake, or a bomb
MAX_VALUES = 20_000  # values once every alias is expanded: a spec has hundreds; an alias bomb has billions


def parse_yaml(text: str, source: str) -> tuple[dict[str, Any], dict[Loc, int]]:
    """Parse YAML into a mapping plus the line number (1-based) of every key and list item in it.

    Raises:
        SpecError: not YAML, not a mapping, a key given twice in one mapping, nested deeper than ``MAX_DEPTH``
            or more than ``MAX_VALUES`` values once aliases are expanded.
    """
    raw, lines = load_yaml(text, source)
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise SpecError(source, [f"got {got}, a job spec must be a YAML mapping (name: ..., model: ..., ...)"])
    return raw, lines


def load_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """Any YAML value, checked as :func:`parse_yaml` describes, plus the line of every key and list item."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise SpecError(source, [f"nested too deeply: a job spec has at most {MAX_DEPTH} levels"]) from None
        lines: dict[Loc, int] = {}
        if node is None:
            return None, lines
        _check_and_index(node, source, lines)
        return loader.construct_document(node), lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{source}{where}", [f"malformed YAML: {problem}"]) from None
    finally:
        loader.dispose()


def validate_spec(raw: dict[str, Any], *, source: str, lines: dict[Loc, int] | None = None) -> JobSpec:
    """Validate an already-parsed spec; problems are reported against ``source`` and ``lines``."""
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        problems = [format_problem(error, raw, lines or {}) for error in exc.errors()]
        raise SpecError(source, problems, hint="`orchestrator schema` prints every field") from None


def _check_and_index(root: yaml.Node, source: str, lines: dict[Loc, int]) -> None:
    """Walk the document (aliases expanded, without recursion) recording each key's and item's line; refuse
    duplicate keys, too deep a nesting and too many values (an alias bomb) before anything is built from it."""
    problems: list[str] = []
    stack: list[tuple[yaml.Node, Loc]] = [(root, ())]
    values = 0
    while stack:
        node, loc = stack.pop()
        values += 1
        if values > MAX_VALUES:
            raise SpecError(
                source,
                [
                    f"more than {MAX_VALUES:,} values once its aliases (*name) are expanded: "
                    "a job spec has a few hundred; are aliases repeating aliases?"
                ],
            )
        if len(loc) > MAX_DEPTH:
            line = node.start_mark.line + 1
            raise SpecError(source, [f"line {line}: nested more than {MAX_DEPTH} levels deep: a job spec has a few"])
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    stack.append((value_node, loc))  # a merge (<<: *base) brings keys that explicit ones override
                    continue
                child = (*loc, key_node.value)
                line = key_node.start_mark.line + 1
                if key_node.value in first:
                    problems.append(
                        f"line {line}: {_dotted(child)}: given twice (lines {first[key_node.value]} and "
                        f"{line}); the last would silently win: keep one"
                    )
                first[key_node.value] = line
                lines.setdefault(child, line)
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*loc, index)
                lines.setdefault(child, item.start_mark.line + 1)
                stack.append((item, child))
    if problems:
        raise SpecError(source, sorted(problems, key=lambda p: int(p.split(":")[0].removeprefix("line "))))


def format_problem(error: ErrorDetails, raw: dict[str, Any], lines: dict[Loc, int]) -> str:
    """One line: ``[line N: ]path: got VALUE, what is accepted``."""
    path = _data_path(_without_tags(error["loc"]), raw)
    kind = error["type"]
    if kind == "missing" and path and isinstance(path[-1], int):
        parent = path[:-1]  # a tuple given too few values: speak of the tuple, not of the absent item
        value = _value_at(raw, parent)
        line = _nearest_line(parent, lines)
        return (
            f"{'line ' + str(line) + ': ' if line else ''}{_dotted(parent)}: got {_show(value)}, needs a value "
            f"at position {path[-1] + 1}"
        )
    if kind == "union_tag_invalid":
        key = _discriminator_key(error).split(" or ")[0].strip("'")
        path = (*path, key)
    message = _describe(error, path)
    path_loc: Loc = path
    if kind == "value_error" and re.match(r"^[a-z_.\[\]0-9]+: ", message):
        named, _, message = message.partition(": ")
        path_loc = tuple(named.split("."))
    line = _nearest_line(path_loc, lines)
    dotted = _dotted(path_loc) or "(top level)"
    return f"{'line ' + str(line) + ': ' if line else ''}{dotted}: {message}"


def _describe(error: ErrorDetails, path: Loc) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "missing":
        return "missing, required"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(error["loc"][:-1])
        return "unknown key" + _suggest(str(path[-1]), allowed, "allowed keys")
    if kind == "union_tag_invalid":
        expected = [
            t for t in re.findall(r"'([^']+)'", str(ctx.get("expected_tags", ""))) if t not in ("function", "callable")
        ]
        alternative = " (or function: path/to/file.py:build)" if path[-1:] == ("recipe",) else ""
        return f"got {ctx.get('tag')!r}, must be one of {', '.join(expected)}{alternative}" + _suggest(
            str(ctx.get("tag")), expected, None
        )
    if kind == "union_tag_not_found":
        return f"needs one of the keys {_discriminator_key(error)}"
    if kind == "string_pattern_mismatch" and path[-1:] in PATTERN_RULES:
        return f"got {_show(error['input'])}, must be {PATTERN_RULES[path[-1:]]}"
    if kind == "model_attributes_type" or kind == "dict_type":
        return f"got {_show(error['input'])}, must be a mapping"
    if kind == "literal_error":
        expected = re.findall(r"'([^']+)'", str(ctx.get("expected", "")))
        return f"got {_show(error['input'])}, must be one of {', '.join(expected)}" + _suggest(
            str(error["input"]), expected, None
        )
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    for subject in ("List should have", "Tuple should have", "Dictionary should have"):
        message = message.replace(subject, "must have")
    message = message.replace(" after validation", "")
    if kind == "value_error":
        return message
    return f"got {_show(error['input'])}, {message}"


def _discriminator_key(error: ErrorDetails) -> str:
    """The YAML key that picks a union member ('recipe' for models, whose tag is computed)."""
    key = str(error.get("ctx", {}).get("discriminator", "")).strip("'")
    return "'recipe' or 'function'" if key.endswith("()") else f"'{key}'"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(received: str, candidates: list[str], label: str | None) -> str:
    close = difflib.get_close_matches(received, candidates, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    if label and candidates:
        return f"; {label}: {', '.join(candidates)}"
    return ""


def _data_path(loc: Loc, raw: Any) -> Loc:
    """Drop what pydantic adds to a location (union tags, validator names) so it matches the YAML."""
    path: list[str | int] = []
    node = raw
    for index, part in enumerate(loc):
        found, child = _child(node, part)
        if found:
            path.append(part)
            node = child
        elif index == len(loc) - 1 and (isinstance(node, dict) or (isinstance(node, list) and isinstance(part, int))):
            path.append(part)  # a missing or unknown key (or tuple item): name it although it has no value
    return tuple(path)


def _value_at(raw: Any, path: Loc) -> Any:
    node = raw
    for part in path:
        found, node = _child(node, part)
        if not found:
            return None
    return node


def _without_tags(loc: Loc) -> Loc:
    """Remove the union tags pydantic puts in a location (``model.function.width`` -> ``model.width``)."""
    kept: list[str | int] = []
    model: type[BaseModel] | None = JobSpec
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        kept.append(part)
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            model = None
            continue
        candidates = _models_in(model.model_fields[part].annotation)
        if len(candidates) > 1 and parts and isinstance(parts[0], str):
            tag = parts.pop(0)
            candidates = [c for c in candidates if tag in _tags_of(c)] or candidates
        model = candidates[0] if candidates else None
    return tuple(kept)


def _child(node: Any, part: str | int) -> tuple[bool, Any]:
    if isinstance(node, dict) and part in node:
        return True, node[part]
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return True, node[part]
    return False, None


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _nearest_line(loc: Loc, lines: dict[Loc, int]) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _allowed_keys(loc: Loc) -> list[str]:
    """The field names of the model at a pydantic location (following union tags in the location)."""
    model: type[BaseModel] = JobSpec
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if isinstance(part, int) or part not in model.model_fields:
            continue
        candidates = _models_in(model.model_fields[part].annotation)
        if not candidates:
            return []
        if len(candidates) > 1 and parts and isinstance(parts[0], str):
            tag = parts.pop(0)
            candidates = [c for c in candidates if tag in _tags_of(c)] or candidates
        model = candidates[0]
    return list(model.model_fields)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple):
        return [model for arg in get_args(annotation) for model in _models_in(arg)]
    return []


def _tags_of(model: type[BaseModel]) -> set[str]:
    """Values of a model's Literal fields (its union tag), plus the names of fields only it has."""
    tags: set[str] = set(model.model_fields)
    for field in model.model_fields.values():
        if get_origin(field.annotation) is typing.Literal:
            tags.update(str(a) for a in get_args(field.annotation))
    return tags
