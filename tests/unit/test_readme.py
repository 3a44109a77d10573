"""The README's two set-up commands stay runnable and .ci/run keeps calling the README's test command."""

from __future__ import annotations

import re

from tests.conftest import REPO


def setup_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Set-up.*?```bash\n(.*?)```", readme, re.S)
    assert block is not None, "README.md has no ## Set-up section with a bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_two_setup_commands_run_then_test() -> None:
    run, test = setup_commands()
    assert run == "pip install -e . && orchestrator run jobs/quickstart.yaml"
    assert (REPO / "jobs" / "quickstart.yaml").is_file()
    assert "pytest" in test


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, test = setup_commands()
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines
