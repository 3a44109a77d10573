"""The user's config file: flag > environment > config file > built-in default, for the store, the two cluster
addresses and the k8s image; a bad file is one line naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator import runner, submission
from orchestrator.cli import app
from orchestrator.errors import ClusterError
from orchestrator.store import DEFAULT_STORE, default_store_url
from tests.conftest import JOBS

cli = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = cli.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        'store = "/from/config"\n'
        'address = "ray://config-head:10001"\n'
        'jobs_address = "http://config-head:8265"\n'
        'k8s_image = "registry.example/orchestrator:config"\n'
    )
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(path))
    monkeypatch.delenv("ORCHESTRATOR_STORE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return path


def test_store_precedence_flag_then_environment_then_file_then_default(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert default_store_url(None) == "/from/config"
    monkeypatch.setenv("ORCHESTRATOR_STORE", "/from/env")
    assert default_store_url(None) == "/from/env"
    assert default_store_url("/from/flag") == "/from/flag"
    monkeypatch.delenv("ORCHESTRATOR_STORE")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", "")
    assert default_store_url(None) == str(DEFAULT_STORE)


def test_the_default_file_is_under_xdg_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHESTRATOR_CONFIG")
    monkeypatch.delenv("ORCHESTRATOR_STORE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_store_url(None) == str(DEFAULT_STORE)  # no file there: it is optional
    (tmp_path / "orchestrator").mkdir()
    (tmp_path / "orchestrator" / "config.toml").write_text('store = "gs://team/store"\n')
    assert default_store_url(None) == "gs://team/store"


def test_commands_use_the_files_store(config_file: Path, tmp_path: Path) -> None:
    store = tmp_path / "configured-store"
    config_file.write_text(f'store = "{store}"\n')
    code, out, err = invoke("list", "--json")
    assert code == 0, err
    assert json.loads(out)["store"] == str(store)


def test_run_and_resume_take_the_files_address_after_the_flag_and_ray_address(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_run_spec(spec: object, **kwargs: object) -> object:  # what `run` calls, through orchestrator.run
        raise ClusterError(f"address={kwargs['address']}")

    monkeypatch.setattr(runner, "run_spec", fake_run_spec)
    quickstart = str(JOBS / "quickstart.yaml")
    assert "address=ray://config-head:10001" in invoke("run", quickstart)[2]
    monkeypatch.setenv("RAY_ADDRESS", "ray://env-head:10001")
    assert "address=ray://env-head:10001" in invoke("run", quickstart)[2]
    assert "address=ray://flag-head:10001" in invoke("run", quickstart, "--address", "ray://flag-head:10001")[2]


def test_submit_and_cancel_take_the_files_jobs_address(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(*args: object, **kwargs: object) -> object:
        raise ClusterError(f"jobs address={kwargs['address']}")

    monkeypatch.setattr(submission, "submit", fake)
    monkeypatch.setattr(submission, "cancel", fake)
    assert "jobs address=http://config-head:8265" in invoke("submit", str(JOBS / "quickstart.yaml"))[2]
    assert "jobs address=http://config-head:8265" in invoke("cancel", "quickstart")[2]
    monkeypatch.setenv("RAY_ADDRESS", "http://env-head:8265")
    assert "jobs address=http://env-head:8265" in invoke("cancel", "quickstart")[2]


def test_k8s_render_takes_the_files_image_and_says_when_there_is_none(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = str(JOBS / "quickstart.yaml")
    code, out, err = invoke("k8s", "render", spec, "--store", "gs://bucket/store")
    assert code == 0, err
    assert "image: registry.example/orchestrator:config" in out
    monkeypatch.setenv("ORCHESTRATOR_K8S_IMAGE", "registry.example/orchestrator:env")
    assert "image: registry.example/orchestrator:env" in invoke("k8s", "render", spec, "--store", "gs://bucket/s")[1]
    monkeypatch.delenv("ORCHESTRATOR_K8S_IMAGE")
    config_file.write_text("")
    code, out, err = invoke("k8s", "render", spec, "--store", "gs://bucket/store")
    assert code == 2 and out == ""
    assert "error[usage]: --image: missing: the container image the pods run" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('stor = "/x"\n', "stor: unknown key; allowed keys: store, address, jobs_address, k8s_image"),
        ("store = 3\n", "store: got 3, must be a non-empty string"),
        ('store = ""\n', "store: got '', must be a non-empty string"),
        ("store = /x\n", "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file_and_the_key(config_file: Path, text: str, message: str) -> None:
    config_file.write_text(text)
    for args in (("list",), ("config",)):
        code, out, err = invoke(*args)
        assert code == 2 and out == ""
        assert f"error[config]: config file {config_file}: " in err and message in err
        assert "Traceback" not in err
    code, out, _ = invoke("list", "--json")
    assert code == 2 and json.loads(out)["error"]["code"] == "config"


def test_a_config_file_named_in_the_environment_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(tmp_path / "missing.toml"))
    monkeypatch.delenv("ORCHESTRATOR_STORE")  # the file is read only when no option or variable comes first
    code, _, err = invoke("list")
    assert code == 2 and f"config file {tmp_path / 'missing.toml'} ($ORCHESTRATOR_CONFIG): not found" in err


def test_config_shows_each_setting_and_where_it_comes_from(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "ray://env-head:10001")
    config_file.write_text('store = "/from/config"\n')
    code, out, err = invoke("config", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["path"] == str(config_file) and result["exists"] is True
    rows = {row["key"]: (row["value"], row["source"]) for row in result["settings"]}
    assert rows == {
        "store": ("/from/config", "config file"),
        "address": ("ray://env-head:10001", "$RAY_ADDRESS"),
        "jobs_address": ("ray://env-head:10001", "$RAY_ADDRESS"),
        "k8s_image": (None, "default: none: --image is then required"),
    }
    code, out, _ = invoke("config")
    assert code == 0 and f"config file: {config_file}" in out and "precedence: the option, else" in out


def test_help_shows_the_environment_variables_and_the_config_file() -> None:
    code, out, _ = invoke("run", "--help")
    assert code == 0 and "RAY_ADDRESS" in out and "ORCHESTRATOR_STORE" in out and "config file" in out
    code, out, _ = invoke("--help")
    assert code == 0 and "config.toml" in out and "ORCHESTRATOR_CONFIG" in out
