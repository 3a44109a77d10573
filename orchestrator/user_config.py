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

    [retention]                                 # what `orchestrator prune` deletes (dry run without --yes)
    finished_after = "30d"                      # jobs that ended (SUCCEEDED, STOPPED, FAILED) this long ago
    keep_snapshots = true                       # then only a SUCCEEDED job's backups; keep the rest

    [cost]                                      # status, compare: fields a job's spec leaves out of its cost
    spot_per_hour = 0.9                         # one GPU-hour (a CPU-only job: one worker-hour) on spot
    on_demand_per_hour = 2.9                    # the same on demand
    currency = "$"                              # the label before each amount (the default)

A file that cannot be read, is not TOML or has an unknown key is an error naming the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import ConfigError, UsageError
from orchestrator.log_times import DURATION_RULE, parse_duration
from orchestrator.spec import CostSpec

CONFIG_ENV = "ORCHESTRATOR_CONFIG"
CONFIG_HINT = (
    "fix the file, or move it away; its keys: store, address, jobs_address, k8s_image (TOML strings), "
    "notify (a list of strings), mlflow_tracking_uri (a TOML string), [retention] finished_after (a duration such "
    "as 30d), keep_snapshots (true/false), [cost] spot_per_hour, on_demand_per_hour (numbers >= 0), currency"
)


class Retention(BaseModel):
    """``[retention]``: how long a store keeps finished jobs, applied by ``orchestrator prune``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    finished_after: str | None = Field(default=None, description="a job ended this long ago goes: 30d, 12h")
    keep_snapshots: bool = Field(
        default=False,
        description="delete only a SUCCEEDED job's backups (its records, models and snapshots stay); keep a "
        "STOPPED or FAILED one whole (resume continues from its backups)",
    )

    @field_validator("finished_after")
    @classmethod
    def _a_duration(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_duration(value, "finished_after")
            except UsageError:
                raise ValueError(f"must be {DURATION_RULE}") from None
        return value


class UserConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    store: str | None = Field(default=None, min_length=1)
    address: str | None = Field(default=None, min_length=1)
    jobs_address: str | None = Field(default=None, min_length=1)
    k8s_image: str | None = Field(default=None, min_length=1)
    notify: list[str] | None = Field(
        default=None, description="apprise URLs for jobs whose spec sets no notify.urls (read by the driver)"
    )
    retention: Retention = Field(default_factory=Retention)
    cost: CostSpec | None = Field(default=None, description="prices for the fields a job's spec leaves out")
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


KEYS = [*SETTINGS, "notify", "mlflow_tracking_uri", "retention", "cost"]


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
            if key.startswith("retention."):
                allowed = "finished_after, keep_snapshots"
            elif key.startswith("cost."):
                allowed = ", ".join(CostSpec.model_fields)
            else:
                allowed = ", ".join(KEYS)
            why = f"unknown key; allowed keys: {allowed}"
        elif key.startswith("retention"):
            why = f"got {problem['input']!r}: {problem['msg'].removeprefix('Value error, ')}"
        elif key.startswith("cost"):
            message = problem["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
            why = message if message.startswith("got ") else f"got {problem['input']!r}, {message}"
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


def prices(spec: CostSpec) -> CostSpec | None:
    """A job's prices: each field from its spec, else from the config file's ``[cost]`` table (read only for a
    field the spec leaves out); ``None`` when neither gives a price."""
    if spec.spot_per_hour is None or spec.on_demand_per_hour is None or spec.currency is None:
        configured = load_config().cost or CostSpec()
        spec = CostSpec(
            **{
                field: getattr(spec, field) if getattr(spec, field) is not None else getattr(configured, field)
                for field in CostSpec.model_fields
            }
        )
    return spec if spec.spot_per_hour is not None or spec.on_demand_per_hour is not None else None
