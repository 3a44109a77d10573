"""Imports run with the flow (docs/architecture.md, "The flow"): CLI -> store -> driver -> workers.

Read with ``ast`` from the source, so that an import inside a function counts as much as one at the top:

* the CLI side (the commands a person runs, and their views) imports nothing of ``orchestrator.worker`` at
  module level, and no TensorFlow or Ray there either: ``orchestrator status`` must not pay for them;
* outside ``orchestrator.worker``, only the worker's entry points are imported, anywhere: its config, its
  ``train_loop`` (what Ray Train runs) and ``preload`` (the warm processes' hook); and its pure ``notice``
  (which ``control_policy`` asks about preemption notices);
* the worker imports nothing of the CLI side, anywhere;
* the pure modules (decisions and records) import no TensorFlow, Keras or Ray, anywhere, and of the
  orchestrator only other pure modules.

And no module is longer than a reader holds at once (``MAX_LINES``), but for those ``LONG_MODULES`` names, each
with its reason.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"
CLI_SIDE = {
    "orchestrator.__main__",
    "orchestrator.cli",
    "orchestrator.cli_live",
    "orchestrator.cli_cluster",
    "orchestrator.cli_jobs",
    "orchestrator.retention",
    "orchestrator.views",
    "orchestrator.render",
    "orchestrator.tables",
    "orchestrator.commands",
    "orchestrator.jobs",
    "orchestrator.runner",
    "orchestrator.stopping",
    "orchestrator.local_head",
    "orchestrator.submission",
    "orchestrator.k8s",
    "orchestrator.k8s_checks",
    "orchestrator.k8s_profiles",
    "orchestrator.sweep",
    "orchestrator.spec_loader",
    "orchestrator.launcher",
    "orchestrator.api",
    "orchestrator.handle",
    "orchestrator.model_fn",
}
WORKER_ENTRY_POINTS = {"orchestrator.worker.config", "orchestrator.worker.train_loop", "orchestrator.worker.preload"}
PURE = {
    "orchestrator",
    "orchestrator.errors",
    "orchestrator.status",
    "orchestrator.spec",
    "orchestrator.records",
    "orchestrator.lr_plan",
    "orchestrator.backup_interval",
    "orchestrator.recovery",
    "orchestrator.cost",
    "orchestrator.control_policy",
    "orchestrator.plot",
    "orchestrator.worker",  # the package itself: import-light on purpose
    "orchestrator.worker.notice",
    "orchestrator.worker.scratch",
    "orchestrator.log_times",
}
HEAVY = {"tensorflow", "tf_keras", "keras", "ray"}
# Imports that run against the rules on purpose, each with its reason.
ALLOWED: dict[tuple[str, str], str] = {
    ("orchestrator", "orchestrator.api"): "the package's public names (run, job, ...) load the Python API on first "
    "use, in __getattr__, never at import: `import orchestrator` stays pure; the API imports no TF or Ray at import",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str) -> list[tuple[str, bool]]:
    """Every module ``source`` imports, with whether the import runs at module level (not inside a function)."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolved against this module's package
                    package = module.split(".")[: -child.level]
                    base = ".".join([*package, base] if base else package)
                found.append((base, top))
                if base.startswith("orchestrator"):  # `from pkg import module`
                    found.extend((f"{base}.{alias.name}", top) for alias in child.names)
            visit(child, inner)

    visit(ast.parse(source), True)
    return found


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(sources: dict[str, str], known: set[str]) -> list[str]:
    """What breaks the rules, one line each; ``known``: the orchestrator's module names (``from pkg import name``
    counts only where ``pkg.name`` is a module)."""
    found = []
    for module, source in sorted(sources.items()):
        for target, top in imports(source, module):
            if target.startswith("orchestrator") and target not in known:
                continue
            if (module, target) in ALLOWED:
                continue
            rule = _broken_rule(module, target, top)
            if rule is not None:
                found.append(f"{module} imports {target}{'' if top else ' (in a function)'}: {rule}")
    return found


def _broken_rule(module: str, target: str, top: bool) -> str | None:
    in_worker = under(module, "orchestrator.worker")
    root = target.split(".")[0]
    if module in CLI_SIDE and top and (under(target, "orchestrator.worker") or root in HEAVY):
        return "the CLI side imports the worker, TensorFlow or Ray only when it runs them"
    if not in_worker and target.startswith("orchestrator.worker.") and target not in WORKER_ENTRY_POINTS | PURE:
        return "outside the worker only its entry points and pure modules are imported"
    if in_worker and target in CLI_SIDE:
        return "the worker imports nothing of the CLI side"
    if module in PURE and root in HEAVY:
        return "a pure module imports no TensorFlow, Keras or Ray"
    if module in PURE and root == "orchestrator" and target not in PURE:
        return "a pure module imports only pure modules"
    return None


def tree() -> dict[str, str]:
    return {module_name(path): path.read_text() for path in PACKAGE.rglob("*.py")}


def test_every_import_in_the_package_runs_with_the_flow() -> None:
    sources = tree()
    assert violations(sources, set(sources)) == []


def test_the_rules_name_modules_that_exist() -> None:
    known = set(tree())
    assert (CLI_SIDE | WORKER_ENTRY_POINTS | PURE) - known == set()


BAD = {
    "the CLI into the worker": ("orchestrator.cli", "from orchestrator.worker.control import TrainingControl\n"),
    "the CLI into TensorFlow": ("orchestrator.views", "import tensorflow as tf\n"),
    "the driver into worker internals": ("orchestrator.driver", "from orchestrator.worker import session\n"),
    "a plot into the worker's backups": (
        "orchestrator.run_plot",
        "from orchestrator.worker.backup import CHECKPOINT_PREFIX\n",
    ),
    "the worker into the CLI": ("orchestrator.worker.plots", "def f():\n    from orchestrator.commands import x\n"),
    "a policy into Ray": ("orchestrator.control_policy", "def f():\n    import ray.train\n"),
    "a policy into tf_keras": ("orchestrator.lr_plan", "import tf_keras\n"),
    "a policy into the store": ("orchestrator.recovery", "from orchestrator.store import JobStore\n"),
    "a relative import into the worker": ("orchestrator.runner", "from .worker.session import TrainingSession\n"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_an_import_against_the_flow_is_caught(case: str) -> None:
    module, source = BAD[case]
    known = {*tree(), "orchestrator.commands.x"}
    assert len(violations({module: source}, known)) == 1


def test_a_lazy_worker_import_on_the_cli_side_is_allowed() -> None:
    source = "def run():\n    from orchestrator.worker.preload import HOOK\n    import ray\n"
    assert violations({"orchestrator.launcher": source}, set(tree())) == []


def test_importing_every_pure_module_loads_no_tensorflow_and_no_ray() -> None:
    code = (
        f"import importlib, sys\nfor name in {sorted(PURE)!r}:\n    importlib.import_module(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(HEAVY)!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    )
    assert result.stdout.strip() == "[]"


MAX_LINES = 450
# Modules over MAX_LINES, each with its reason; the list only shrinks (delete an entry once its module fits).
LONG_MODULES = {
    "spec.py": "the declarative spec: one field after another with its rule, read top to bottom",
}


def test_no_module_is_longer_than_a_reader_holds_at_once() -> None:
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    too_long = {module: size for module, size in sizes.items() if size > MAX_LINES and module not in LONG_MODULES}
    assert too_long == {}, f"split these into modules of at most {MAX_LINES} lines, along their seams"
    assert set(LONG_MODULES) <= set(sizes), "LONG_MODULES names a module that is gone"
