"""The ``orchestrator`` commands that run a job on a cluster: ``submit``, ``cancel``, the local head (``up``,
``down``) and the Kubernetes manifests (``k8s render``). Registered on ``cli.app``, which imports this module;
wiring only, as in ``cli``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from orchestrator import api
from orchestrator.cli import (
    JobArgument,
    JsonOption,
    SetOption,
    StoreOption,
    app,
    emit,
    exit_for,
    open_store,
    reports_errors,
)
from orchestrator.cli_live import follow_job, json_line
from orchestrator.errors import InterruptedByUserError, SpecError, UsageError
from orchestrator.spec_loader import parse_yaml, read_spec_text
from orchestrator.status import JobStatus
from orchestrator.store import STORE_ENV, JobStore, default_store_url, validate_job_name
from orchestrator.user_config import setting
from orchestrator.views import SubmitOutput, WatchEvent


@app.command()
@reports_errors
def submit(
    spec: Path = typer.Argument(..., help="Job spec (YAML); its folder is shipped to the cluster."),
    name: str | None = typer.Option(None, "--name", help="Job name (default: the spec's name)."),
    store: str | None = StoreOption,
    address: str | None = typer.Option(
        None,
        "--address",
        envvar="RAY_ADDRESS",
        help="The cluster's Jobs API, http://HEAD:8265; else `jobs_address` in the config file, else the local "
        "head of `orchestrator up`, started if needed.",
    ),
    or_resume: bool = typer.Option(False, "--or-resume", help="If the job exists, continue it from its backup."),
    follow: bool = typer.Option(
        False,
        "-f",
        "--follow",
        help="Then show its progress as `watch` does until it ends, exiting with its status (0, 7, 1); Ctrl+C "
        "detaches (the job keeps running). With --json: one JSON object per line.",
    ),
    overrides: list[str] | None = SetOption,
    as_json: bool = JsonOption,
) -> None:
    """Run SPEC on a Ray cluster through the Ray Jobs API; returns once the job is recorded in the store (the job
    runs on without this shell), or with --follow once it ends."""
    if name is not None:
        validate_job_name(name)
    job_store = open_store(store)
    submitted = api.submit(
        spec,
        store=job_store,
        name=name,
        overrides=overrides,
        address=setting(address, "jobs_address"),
        or_resume=or_resume,
    ).submission
    if submitted is None:  # never, for a submit that returned
        raise RuntimeError("submit returned without its submission")
    if not follow:
        emit(submitted, as_json)
        return
    exit_for(_follow(job_store, submitted, as_json))


def _follow(job_store: JobStore, submitted: SubmitOutput, as_json: bool) -> JobStatus:
    """``submit --follow``: the submission, then the job as ``watch`` shows it, to its final status."""
    if as_json:
        json_line(WatchEvent(event="submitted", job=submitted.name, submission=submitted))
    else:
        emit(submitted, as_json)
    try:
        return follow_job(job_store, submitted.name, as_json).status
    except KeyboardInterrupt:
        raise InterruptedByUserError(
            f"detached from job '{submitted.name}': it keeps running on {submitted.address}",
            hint=f"follow it again: orchestrator watch {submitted.name}{submitted.store_option()}",
        ) from None


@app.command()
@reports_errors
def cancel(
    job: str = JobArgument,
    store: str | None = StoreOption,
    address: str | None = typer.Option(
        None,
        "--address",
        envvar="RAY_ADDRESS",
        help="The cluster's Jobs API; else `jobs_address` in the config file, else the local head.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Cancel a submitted job: it backs up and stops (resumable), then its Ray job is stopped."""
    from orchestrator import submission

    job_store = open_store(store)
    emit(submission.cancel(validate_job_name(job), store=job_store, address=setting(address, "jobs_address")), as_json)


@app.command()
@reports_errors
def up(
    port: int = typer.Option(6379, "--port", help="The head's GCS port."),
    dashboard_port: int = typer.Option(8265, "--dashboard-port", help="The Jobs API / dashboard port."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", help="CPUs the head offers (default: all)."),
    as_json: bool = JsonOption,
) -> None:
    """Start a local Ray head in the background (token authentication on) for submit; reuses a running one."""
    from orchestrator import local_head

    emit(local_head.up(port=port, dashboard_port=dashboard_port, num_cpus=num_cpus), as_json)


@app.command()
@reports_errors
def down(as_json: bool = JsonOption) -> None:
    """Stop the local Ray head that `orchestrator up` started (and the jobs running on it)."""
    from orchestrator import local_head

    emit(local_head.down(), as_json)


k8s_app = typer.Typer(help="Kubernetes (KubeRay) manifests for a job spec.", no_args_is_help=True)
app.add_typer(k8s_app, name="k8s")


@k8s_app.command("render")
@reports_errors
def k8s_render(
    spec: Path = typer.Argument(..., help="Job spec (YAML)."),
    store: str | None = typer.Option(
        None, "--store", envvar=STORE_ENV, help="Shared store (gs:// or s3://); else `store` in the config file."
    ),
    image: str | None = typer.Option(
        None,
        "--image",
        envvar="ORCHESTRATOR_K8S_IMAGE",
        help="Container image with orchestrator installed (k8s/Dockerfile); else `k8s_image` in the config file.",
    ),
    namespace: str = typer.Option("default", "--namespace", help="Kubernetes namespace."),
    cluster: str = typer.Option(
        "gke-spot-gpu",
        "--cluster",
        help="Cluster profile: gke-spot-gpu, gke-compute-class, eks-spot-gpu, aks-spot-gpu, cpu-test.",
    ),
    name: str | None = typer.Option(None, "--name", help="Job name (default: the spec's name)."),
    deadline: str = typer.Option(
        "3d", "--deadline", help="Most the RayJob may take (activeDeadlineSeconds): 1800, 90m, 36h, 3d, or none."
    ),
    start_deadline: str = typer.Option(
        "30m",
        "--start-deadline",
        help="Most the head and the first workers may take to run (preRunningDeadlineSeconds), or none.",
    ),
    queue: str | None = typer.Option(
        None, "--queue", help="Kueue LocalQueue: the RayJob is created suspended, for Kueue to admit (default: none)."
    ),
) -> None:
    """Print the ConfigMap and RayJob that run SPEC on a KubeRay cluster (kubectl apply -f -)."""
    from orchestrator import k8s

    text = read_spec_text(spec)  # a missing, unreadable or non-UTF-8 spec is reported as every command does
    docs = k8s.render_rayjob(
        text,
        name or _spec_name(text, str(spec)),
        store_url=default_store_url(store),
        image=_k8s_image(image),
        namespace=namespace,
        cluster=cluster,
        source=str(spec),
        deadline_s=k8s.parse_duration(deadline, "--deadline"),
        start_deadline_s=k8s.parse_duration(start_deadline, "--start-deadline"),
        queue=queue,
    )
    sys.stdout.write(k8s.dump_manifests(docs))


def _k8s_image(option: str | None) -> str:
    """The image the pods run: --image, else its environment variable or the config file's; one is needed."""
    image = setting(option, "k8s_image")
    if image is None:
        raise UsageError(
            "--image: missing: the container image the pods run (k8s/Dockerfile builds one)",
            hint="give it with --image, $ORCHESTRATOR_K8S_IMAGE or k8s_image in the config file",
        )
    return image


def _spec_name(text: str, source: str) -> str:
    """The name a spec gives itself (its files are not looked for here: on Kubernetes they are in the image)."""
    raw, _ = parse_yaml(text, source)
    name = raw.get("name")
    if not isinstance(name, str):
        raise SpecError(source, [f"name: got {name!r}, must be the job's name"], hint="or give it with --name NAME")
    return name
