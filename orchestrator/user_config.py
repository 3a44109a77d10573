"""The user's config file: defaults for what a person would otherwise repeat on every command.

Precedence, for every setting: the command-line flag, then the environment variable, then this file, then the
built-in default. The file is ``$ORCHESTRATOR_CONFIG`` (set to an empty value: no file), else
``$XDG_CONFIG_HOME/orchestrator/config.toml`` (``~/.config/orchestrator/config.toml``). Example::

    store = "gs://my-bucket/orchestrator"       # --store, $ORCHESTRATOR_STORE
    address = "ray://head.example:10001"        # run, resume, sweep --address, $RAY_ADDRESS
    jobs_address = "http://head.example:8265"   # submit, cancel --address, $RAY_ADDRESS
    k8s_image = "registry.example/orchestrator:0.1.0-ray2.60.0-py311-gpu"   # k8s render --image
    notify = ["ntfy://my-topic"]                # jobs whose spec has no notify.urls (read by the driver)
    mlflow_tracking_uri = "sqlite:////data/mlflow.db"   # jobs with tracking.mlflow but no tracking_uri (driver)

A file that cannot be read, is not TOML or has an unknown key is an error naming the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import ConfigError

CONFIG_ENV = "ORCHESTRATOR_CONFIG"
CONFIG_HINT = (
    "fix the file, or move it away; its keys: store, address, jobs_address, k8s_image (TOML strings), "
    "notify (a list of strings), mlflow_tracking_uri (a TOML string)"
)


class UserConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    store: str | None = Field(default=None, min_length=1)
    address: str | None = Field(default=None, min_length=1)
    jobs_address: str | None = Field(default=None, min_length=1)
    k8s_image: str | None = Field(default=None, min_length=1)
    notify: list[str] | None = Field(
        default=None, description="apprise URLs for jobs whose spec sets no notify.urls (read by the driver)"
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        min_length=1,
        description="MLflow tracking URI for jobs whose spec's tracking.mlflow sets none and whose driver has no "
        "$MLFLOW_TRACKING_URI (read by the driver)",
    )


# Each setting: its option, the environment variable that comes before the file, and the built-in default.
SETTINGS: dict[str, tuple[str, str, str]] = {
    "store": ("--store", "ORCHESTRATOR_STORE", "~/.orchestrator/store"),
    "address": ("run, resume, sweep --address", "RAY_ADDRESS", "an embedded local Ray"),
    "jobs_address": ("submit, cancel --address", "RAY_ADDRESS", "the local head of `orchestrator up`"),
    "k8s_image": ("k8s render --image", "ORCHESTRATOR_K8S_IMAGE", "none: --image is then required"),
}


def config_path() -> Path | None:
    """The config file's path, or None when ``$ORCHESTRATOR_CONFIG`` is set empty (no config file)."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit is not None:
        return Path(explicit).expanduser() if explicit else None
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "orchestrator" / "config.toml"


def load_config() -> UserConfig:
    """The config file's settings; none where there is no file (at the default path: it is optional)."""
    path = config_path()
    if path is None:
        return UserConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if os.environ.get(CONFIG_ENV):
            raise ConfigError(
                f"config file {path} (${CONFIG_ENV}): not found",
                hint=f"create it, or unset ${CONFIG_ENV} (set it empty for no config file)",
            ) from None
        return UserConfig()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc})", hint=CONFIG_HINT) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})", hint=CONFIG_HINT) from None
    try:
        return UserConfig.model_validate(raw)
    except ValidationError as exc:
        problem = exc.errors()[0]
        key = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "extra_forbidden":
            why = f"unknown key; allowed keys: {', '.join(SETTINGS)}"
        else:
            why = f"got {problem['input']!r}, must be a non-empty string"
        raise ConfigError(f"config file {path}: {key}: {why}", hint=CONFIG_HINT) from None


def effective() -> list[tuple[str, str | None, str]]:
    """Each setting as a command without its option gets it: (key, value or None for the built-in default,
    where it comes from)."""
    config = load_config()
    rows: list[tuple[str, str | None, str]] = []
    for key, (_, env, default) in SETTINGS.items():
        value: str | None = getattr(config, key)
        if os.environ.get(env):
            rows.append((key, os.environ[env], f"${env}"))
        elif value is not None:
            rows.append((key, value, "config file"))
        else:
            rows.append((key, None, f"default: {default}"))
    return rows


def setting(flag: str | None, key: str) -> str | None:
    """A setting by precedence: the flag (typer has already put the environment variable there, if set), else
    the config file's, else None (the caller's built-in default)."""
    if flag:
        return flag
    value: str | None = getattr(load_config(), key)
    return value
