"""A job's model built by a Python function (``model.callable``, the Python API's ``model_fn``).

The function travels to the workers pickled with cloudpickle (a notebook's function by value, a module's by
reference) in the job's folder (``model_fn.pkl``, ``model.callable.url``); the workers load it from there
(``recipes.models``). It is stored again by each resume, which must be given it again: a job's record names the
function, not its code, and the process that started the job may be gone.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.spec import CallableModel, JobSpec
from orchestrator.store import JobStore

log = logging.getLogger("orchestrator.runner")  # the CLI prints its warnings

MODEL_FN = "model_fn.pkl"  # a Python-function model, pickled in the job's folder (model.callable.url)
API_HINT = "orchestrator.run(spec, model_fn=build) in Python"


def builder_of(spec: JobSpec) -> Callable[..., Any] | None:
    """The Python function a ``model.callable`` spec carries; a spec file cannot carry one."""
    if not isinstance(spec.model, CallableModel):
        return None
    if spec.model.builder is None:
        raise UsageError(
            f"model.callable: got {spec.model.callable!r}, but no Python function came with it: a spec file cannot "
            "carry one",
            hint=f"name a file instead (model: {{function: path/to/file.py:build}}), or run it with {API_HINT}",
        )
    builder: Callable[..., Any] = spec.model.builder
    return builder


def resume_builder(name: str, model: Any, model_fn: Callable[..., Any] | None) -> bytes | None:
    """The pickled ``model_fn`` a resumed job with a Python-function model needs (``None`` for other jobs)."""
    if not isinstance(model, CallableModel):
        if model_fn is not None:
            what = model.function if hasattr(model, "function") else model.recipe
            raise UsageError(
                f"model_fn: job '{name}' builds its model from its spec ({what}), not from a Python function: "
                "resume it without model_fn"
            )
        return None
    if model_fn is None:
        raise UsageError(
            f"job '{name}' builds its model with the Python function {model.callable}() it was started with; a "
            "resume must rebuild the same model, so it needs that function again",
            hint=f"in Python: orchestrator.job({name!r}, store=...).resume(model_fn={model.callable.split('.')[-1]})",
        )
    given = getattr(model_fn, "__qualname__", type(model_fn).__name__)
    if given != model.callable:
        log.warning(
            "model_fn: job '%s' was started with %s(), resumed with %s(): its backup restores only into the same "
            "model (same layers and shapes)",
            name,
            model.callable,
            given,
        )
    return pickle_builder(model.callable, model_fn)


def pickle_builder(label: str, builder: Callable[..., Any] | None) -> bytes:
    """``builder`` pickled with cloudpickle (a notebook's function by value, a module's by reference)."""
    from ray import cloudpickle

    if builder is None or not callable(builder):
        raise UsageError(f"model_fn: got {builder!r}, must be a function build(input_shape, num_classes, **params)")
    try:
        dumps: Callable[[Any], bytes] = cloudpickle.dumps  # untyped in Ray's copy of cloudpickle
        return bytes(dumps(builder))
    except Exception as exc:  # whatever pickling raises: a lock, an open file, a live session in its closure
        raise UsageError(
            f"model_fn: {label}() cannot be pickled for the workers ({type(exc).__name__}: {exc})",
            hint="build everything the model needs inside the function, not outside it in the notebook",
        ) from None


def store_builder(store: JobStore, name: str, pickled: bytes, why: str) -> None:
    with tempfile.TemporaryDirectory(prefix="orchestrator-model-fn-") as scratch:
        local = Path(scratch) / MODEL_FN
        local.write_bytes(pickled)
        url = store.upload_file(name, str(local), MODEL_FN)
    store.append_log(name, "driver.log", f"{why}: the model's Python function stored for the workers: {url}\n")
