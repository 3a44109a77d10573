"""Jobs on a Ray cluster through the Ray Jobs API: ``submit``, and ``cancel``.

``submit`` validates the spec here, ships the spec's folder as the job's ``runtime_env`` working_dir, and runs
``orchestrator run SPEC --or-resume`` as the job's entrypoint on the cluster: the driver there records the job in
the store and drives it, so ``status``, ``watch``, ``set-lr`` and ``stop`` work from any shell that can read the
store, exactly as for a foreground ``run``. Ray's Jobs API retries nothing, but ``--or-resume`` makes a second
submission (or a KubeRay RayJob retry after the head was lost) continue from the store's latest backup.

Without an address, ``submit`` uses the local head that ``orchestrator up`` started in the background (starting
one if there is none, :mod:`orchestrator.local_head`), so one laptop can submit, watch, change the LR and stop
from separate shells. Ray's client gets the token from the environment or Ray's own file (``local_head``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from orchestrator import lifecycle
from orchestrator.errors import ClusterError, UsageError
from orchestrator.launcher import job_runtime_env
from orchestrator.lifecycle import SUBMISSION_ENV
from orchestrator.local_head import TOKEN_ENV, TOKEN_PATH_ENV, read_head, up, use_token_if_available
from orchestrator.reach import host_port, notice_after, unreachable
from orchestrator.records import JobState, utc_now
from orchestrator.spec import JobSpec
from orchestrator.spec_loader import load_spec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.views import CancelOutput, SubmitOutput

# Passed on to the job's processes when set here: where the store's API is (an emulator), never credentials.
FORWARDED_ENV = ("STORAGE_EMULATOR_HOST",)
# Never shipped in the working_dir: checkpoints, models, virtualenvs and caches the spec's folder may hold.
EXCLUDES = [".git", "__pycache__", ".venv", "venv", "*.keras", "*.h5", ".mypy_cache", ".ruff_cache", ".pytest_cache"]
TERMINAL_RAY_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}
RECORD_WAIT_S = 120.0
NOTICE_S = 10.0  # a cluster slower than this to answer is said to be waited for
STOP_WAIT_S = 30.0  # Ray gives a stopped entrypoint RAY_JOB_STOP_WAIT_TIME_S (3 s) after SIGTERM, then kills it
AGENT_WAIT_S = 60.0  # a head that just started takes a few seconds to accept jobs


JOBS_HINT = (
    "start a local head with: orchestrator up (then submit without --address), or check the cluster's dashboard "
    "address (http://HEAD:8265) in --address / $RAY_ADDRESS / `jobs_address` in the config file"
)


@contextlib.contextmanager
def sdk_address(address: str) -> Iterator[None]:
    """Ray's SDK (``JobSubmissionClient``, the state API) takes ``$RAY_ADDRESS`` over the address it is given: a
    different one is hidden while it runs, so that the address asked for (``--address``) is the one used."""
    other = os.environ.get("RAY_ADDRESS")
    if other is None or other == address:
        yield
        return
    del os.environ["RAY_ADDRESS"]
    try:
        yield
    finally:
        os.environ["RAY_ADDRESS"] = other


def check_jobs_address(address: str) -> None:
    """Fail in seconds when the Jobs API (``http://HOST:PORT``) or the GCS (``HOST:PORT``, which Ray's SDK asks for
    the dashboard's address) cannot be reached: an unknown host or a refused connection is certain."""
    target = host_port(address)
    if target is None:
        return
    what = "the Ray Jobs API" if "://" in address else "the Ray cluster"
    why = unreachable(*target, f"{what} at {address}")
    if why is not None:
        raise ClusterError(f"cannot reach {what} at {address}: {why}", hint=JOBS_HINT)


def job_client(address: str) -> Any:
    """A Ray ``JobSubmissionClient`` for ``address``, with the token; unreachable or refused: a ClusterError."""
    check_jobs_address(address)
    source = use_token_if_available()
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        with sdk_address(address), notice_after(NOTICE_S, f"waiting for the Ray cluster at {address} to answer"):
            return JobSubmissionClient(address)
    except AuthenticationError as exc:
        refused = "rejected the token from " + source if source and "invalid" in str(exc).lower() else None
        raise ClusterError(
            f"the Ray cluster at {address} {refused or 'requires a token, and none was found'}",
            hint=f"put the cluster's token in ${TOKEN_ENV} or in ~/.ray/auth_token (or point ${TOKEN_PATH_ENV} at "
            "it); for a head started by orchestrator up, run this on the same machine and user",
        ) from None
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: Ray wraps requests' errors variously
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"cannot reach the Ray Jobs API at {address}: {first[:200]}", hint=JOBS_HINT) from None


def resolve_address(address: str | None) -> tuple[str, bool]:
    """The Jobs API address to use and whether a head was started for it: ``--address``, ``$RAY_ADDRESS``, else
    the local head from ``orchestrator up`` (started now if none is running)."""
    explicit = address or os.environ.get("RAY_ADDRESS")
    if explicit:
        if explicit in ("local", "auto") or explicit.startswith("ray://"):
            raise UsageError(
                f"--address: got {explicit!r}; submit needs the cluster's Jobs API (its dashboard): http://HEAD:8265"
            )
        return jobs_url(explicit), False
    output = up()
    return output.head.dashboard_url, output.started


def jobs_url(address: str) -> str:
    """The address handed to Ray's Jobs SDK: a URL as it is, and ``HOST:PORT`` as ``http://HOST:PORT``, except from
    ``$RAY_ADDRESS``, where it is Ray's GCS address (what ``ray.init`` takes): the SDK asks that GCS for the
    dashboard's address."""
    if "://" in address or address == os.environ.get("RAY_ADDRESS"):
        return address
    return f"http://{address}"


# ------------------------------------------------------------------------------------------------ submit


def local_addresses() -> set[str]:
    names = {"127.0.0.1", "localhost", "::1", socket.gethostname()}
    with contextlib.suppress(OSError):
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    with contextlib.suppress(Exception):
        from ray._private.services import get_node_ip_address

        names.add(get_node_ip_address())  # type: ignore[no-untyped-call]
    return names


def check_store_reaches_cluster(store: JobStore, address: str, node_ips: set[str], here: set[str]) -> None:
    """A store folder on this machine works only for a cluster whose every node is this machine."""
    if not store.is_local:
        return
    elsewhere = sorted(node_ips - here)
    host = urlparse(address).hostname or address
    if elsewhere or host not in here:
        where = f"nodes on {', '.join(elsewhere)}" if elsewhere else f"its head at {host}"
        raise ClusterError(
            f"store {store.url} is a folder on this machine, but the Ray cluster at {address} has {where}: "
            "the job's driver and workers there cannot read or write it",
            hint="use a store every node can reach: --store gs://BUCKET/orchestrator (or s3://...), "
            "or $ORCHESTRATOR_STORE",
        )


def _cluster_node_ips(address: str) -> set[str]:
    from ray.util.state import list_nodes

    try:
        with sdk_address(address):
            nodes = list_nodes(address=address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
    except Exception as exc:  # the state API wraps connection errors variously
        raise ClusterError(f"cannot list the nodes of the Ray cluster at {address}: {str(exc)[:200]}") from None
    return {node.node_ip for node in nodes}


def shipped_paths_inside(spec: JobSpec, working_dir: Path) -> None:
    """Every local file the spec names must be under the folder submit ships (runtime_env working_dir)."""
    for field, path in spec.local_files():
        if not Path(path).resolve().is_relative_to(working_dir):
            raise UsageError(
                f"{field}: {path} is outside the spec's folder {working_dir}, the only folder submit ships to the "
                "cluster",
                hint="move it into the spec's folder (and name it relative to the spec), or use a gs:// / s3:// URL",
            )


def entrypoint(spec_file: str, name: str, store_url: str, overrides: list[str]) -> str:
    args = ["python", "-m", "orchestrator", "run", spec_file, "--or-resume", "--name", name, "--store", store_url]
    for override in overrides:
        args += ["--set", override]
    return shlex.join(args)


def submit(
    spec_path: Path,
    *,
    store: JobStore,
    name: str | None = None,
    overrides: list[str] | None = None,
    address: str | None = None,
    or_resume: bool = False,
    wait_s: float = RECORD_WAIT_S,
) -> SubmitOutput:
    """Validate, then run the job's driver on the cluster through the Jobs API; return once the store has it.

    Raises:
        SpecError: the spec is invalid (nothing is submitted).
        JobExistsError: the name is taken in the store (unless ``or_resume``).
        ClusterError: the cluster cannot be reached, refuses the token, cannot reach the store, or the job's
            driver failed before recording the job (with the end of its log).
    """
    spec = load_spec(spec_path, name=name, overrides=overrides)
    working_dir = spec_path.resolve().parent
    shipped_paths_inside(spec, working_dir)
    state = _state_to_continue(store, spec.name, or_resume)
    url, _ = resolve_address(address)
    client = job_client(url)  # imports Ray, which sets its loggers' levels: quieten them after
    url = client.get_address()  # the dashboard's URL (Ray's SDK finds it from a GCS address)
    for noisy in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # "uploading package ...": Ray's, not the user's
    check_store_reaches_cluster(store, url, _cluster_node_ips(url), local_addresses())
    store_url = store.url if not store.is_local else str(Path(store.root).resolve())
    submission_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
    if state is not None and state.status is JobStatus.STOPPED and state.stopped_by == "user":
        # A person asks to continue what a person stopped: its run --or-resume may continue it now. The job is
        # STOPPED: its driver recorded its end and owns nothing more (lifecycle).
        store.set_status(spec.name, JobStatus.STOPPED, state.reason, stopped_by=None)
        store.append_log(spec.name, "driver.log", f"submit --or-resume ({submission_id}): continue the stopped job\n")
    _submit_job(
        client,
        url,
        submission_id,
        entrypoint=entrypoint(spec_path.name, spec.name, store_url, list(overrides or [])),
        working_dir=working_dir,
        metadata={"orchestrator_job": spec.name, "store": store_url},
    )
    status = _wait_for_record(client, store, spec.name, submission_id, wait_s, known=state is not None)
    return SubmitOutput(name=spec.name, submission_id=submission_id, address=url, store=store.url, status=status)


def _state_to_continue(store: JobStore, name: str, or_resume: bool) -> JobState | None:
    """The recorded state of the job ``submit --or-resume`` continues (None: a new job); refused when the name is
    taken without ``--or-resume``, or the job already SUCCEEDED."""
    from orchestrator.errors import JobExistsError

    if name not in store.job_names():
        return None
    if not or_resume:
        raise JobExistsError(
            f"a job named '{name}' already exists in store {store.url}",
            hint=f"give it another name with --name, continue it with --or-resume, or see: orchestrator status {name}",
        )
    state = store.read_state(name)
    if state.status is JobStatus.SUCCEEDED:
        raise UsageError(f"job '{name}' already SUCCEEDED in store {store.url}; nothing to continue")
    return state


def _submit_job(
    client: Any, url: str, submission_id: str, *, entrypoint: str, working_dir: Path, metadata: dict[str, str]
) -> None:
    """Hand the job to the Jobs API, waiting up to ``AGENT_WAIT_S`` for the job agent of a head that just started.

    The job's runtime env carries ``job_runtime_env()`` (its variables and the warm pool's setup hook): the
    driver's ``ray.init`` adds none of its own inside a submitted job."""
    job_level = job_runtime_env()
    env_vars = {**job_level["env_vars"], **{key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}}
    env_vars[SUBMISSION_ENV] = submission_id  # the driver's record names it: cancel then knows when it is gone
    runtime_env = {**job_level, "working_dir": str(working_dir), "excludes": EXCLUDES, "env_vars": env_vars}
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            client.submit_job(
                entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env, metadata=metadata
            )
            return
        except Exception as exc:  # the Jobs API reports a refused submission as RuntimeError with the HTTP body
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(1.0)  # a head just started: its job agent is not up yet
                continue
            raise ClusterError(f"the Ray cluster at {url} refused the job: {str(exc).strip()[:300]}") from None


def _wait_for_record(
    client: Any, store: JobStore, name: str, submission_id: str, wait_s: float, *, known: bool
) -> JobStatus | None:
    """Wait until the job's driver has recorded it (or taken it over), so status/watch work right away."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if name in store.job_names():
            state = store.read_state(name)
            if not known or (state.status is not JobStatus.STOPPED and state.status is not JobStatus.FAILED):
                return state.status
        try:
            ray_status = str(client.get_job_status(submission_id))
        except Exception as exc:  # the head went away right after accepting the job
            raise ClusterError(
                f"submitted Ray job {submission_id}, then lost the cluster at {client.get_address()}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}",
                hint=f"see whether it runs: orchestrator status {name}; or submit again with --or-resume",
            ) from None
        if ray_status.split(".")[-1] in TERMINAL_RAY_STATES:
            if name in store.job_names():
                return store.read_state(name).status
            lines = [line for line in client.get_job_logs(submission_id).splitlines() if line.strip()]
            logs = [line for line in lines if line.startswith("error[")] or lines  # our one-line error, if any
            error = ClusterError(
                f"Ray job {submission_id} ended {ray_status.split('.')[-1]} before recording job '{name}': "
                f"{logs[-1][:300] if logs else 'no output'}",
                hint=f"its full log: ray job logs {submission_id} --address {client.get_address()}",
            )
            error.excerpt = "\n".join(lines[-15:])
            raise error
        time.sleep(0.5)
    return None


# ------------------------------------------------------------------------------------------------ cancel


def cancel(
    name: str, *, store: JobStore, address: str | None = None, wait_s: float = 60.0, stop_wait_s: float = STOP_WAIT_S
) -> CancelOutput:
    """Stop a submitted job now. Its driver owns its status, so the job is asked first, through a stop command
    (the workers back up and it ends STOPPED, resumable: waited for while a worker group trains); then its Ray
    job is stopped, and the driver records STOPPED on the SIGTERM as a person's stop.

    Only a driver known to be gone without recording an end leaves the status to ``cancel``
    (``lifecycle``): its Ray job ended (the Jobs API marks a stopped job ended once its entrypoint exited), it
    ended, its process is gone from this host or its heartbeat is stale. Otherwise the stop stays pending.
    """
    explicit = address or os.environ.get("RAY_ADDRESS")
    head = read_head()
    if not explicit and head is None:
        raise UsageError(f"cancel {name}: no --address and no local head (orchestrator up) to find its Ray job on")
    url = jobs_url(explicit) if explicit else head.dashboard_url  # type: ignore[union-attr]
    client = job_client(url)
    url = client.get_address()
    running = [
        job.submission_id
        for job in client.list_jobs()
        if (job.metadata or {}).get("orchestrator_job") == name
        and str(job.status).split(".")[-1] not in TERMINAL_RAY_STATES
    ]
    recorded = name in store.job_names()
    if not running and not recorded:
        raise UsageError(f"no job named '{name}' in store {store.url} and no Ray job for it at {url}")
    if recorded and store.read_state(name).status.is_active():
        _ask_to_stop(store, name, wait_s)
    for submission_id in running:
        with contextlib.suppress(Exception):  # it may have ended by itself in the meantime
            client.stop_job(submission_id)
    ended = _wait_until_ended(client, running, stop_wait_s)
    note = None
    if recorded and store.read_state(name).status.is_active():
        note = _end_if_driver_gone(store, name, running, ended)
    status = store.read_state(name).status if recorded else None
    return CancelOutput(name=name, address=url, stopped=running, status=status, note=note)


def _ask_to_stop(store: JobStore, name: str, wait_s: float) -> None:
    """A stop command for the job's workers; waited for (up to ``wait_s``) only while a worker group trains."""
    from orchestrator.commands import request_stop

    with contextlib.suppress(UsageError):  # a stop already pending is as good
        request_stop(store, name, at_epoch_end=False, issued_by="cancel")
    if _training_now(store, name):  # the workers apply it within a second or two, then back up
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and store.read_state(name).status.is_active():
            time.sleep(0.5)


def _end_if_driver_gone(store: JobStore, name: str, running: list[str], ended: set[str]) -> str | None:
    """Record STOPPED for an active job whose driver is known to be gone; else the note that it still runs."""
    record = store.read_driver(name)
    if record is not None and record.ray_submission in ended:
        gone: str | None = f"its Ray job {record.ray_submission} ended"
    elif record is None and running and set(running) <= ended:
        gone = f"its Ray job(s) {', '.join(running)} ended"  # a driver of an older version: no record
    else:
        gone = lifecycle.driver_gone(record)
    if gone is None:
        return "its driver still runs (not a Ray job stopped here): it stops at the next step, asked by a stop"
    reason = f"cancelled: its driver is gone ({gone}) without recording an end"
    lifecycle.end_for_gone_driver(store, name, JobStatus.STOPPED, reason)
    store.append_log(name, "driver.log", f"orchestrator cancel: {reason}\n")
    return None


def _wait_until_ended(client: Any, submissions: list[str], wait_s: float) -> set[str]:
    """The submissions among ``submissions`` the Jobs API reports ended, waiting up to ``wait_s`` for all."""
    deadline = time.monotonic() + wait_s
    ended: set[str] = set()
    while True:
        for submission_id in set(submissions) - ended:
            try:
                status = str(client.get_job_status(submission_id)).split(".")[-1]
            except Exception:  # the head went away meanwhile: nothing more is known
                continue
            if status in TERMINAL_RAY_STATES:
                ended.add(submission_id)
        if ended >= set(submissions) or time.monotonic() >= deadline:
            return ended
        time.sleep(0.5)


def _training_now(store: JobStore, name: str, fresh_s: float = 30.0) -> bool:
    """Whether a worker group is training (progress written lately): only then is a stop worth waiting for."""
    progress = store.read_progress(name)
    return progress is not None and (utc_now() - progress.updated_at).total_seconds() < fresh_s
