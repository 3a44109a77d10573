"""KubeRay manifests for one job: its spec in a ConfigMap, and a RayJob whose own Ray cluster trains it.

``render_rayjob`` turns a spec into the two objects that ``kubectl apply -f -`` needs to run it on Kubernetes;
``dump_manifests`` writes them as one multi-document YAML stream. The RayJob embeds its Ray cluster
(``rayClusterSpec``) instead of pointing at a running one (``clusterSelector``), because:

- the spec is mounted from the ConfigMap into the head pod, where the entrypoint runs; a running cluster's head
  cannot mount a new ConfigMap;
- a RayJob retry (``backoffLimit``) deletes the job's cluster and makes a new one, which is right only for a
  cluster the RayJob owns; and ``shutdownAfterJobFinishes`` frees the on-demand head and the spot GPUs when the
  job ends;
- the worker group is sized from the spec's ``scaling`` (one Ray worker pod per Ray Train worker), and its pods
  go only to nodes that fit what they ask for: GPU workers to the spot GPU pool, CPU-only workers to spot nodes
  without GPUs (never holding a GPU node they would not use), the head and the submitter to on-demand nodes
  without GPUs.

Every RayJob has two deadlines (``activeDeadlineSeconds``: the whole job; ``preRunningDeadlineSeconds``: the
head and the first workers running), so that a job waiting for spot capacity that never comes does not keep
its on-demand head forever; and every pod passes Pod Security "restricted" (non-root, no privilege escalation,
no capabilities, the runtime's seccomp profile). With ``queue``, the RayJob is created suspended for Kueue,
with a fixed-size cluster (Kueue admits a job whole and refuses the autoscaler).

Every attempt runs the same entrypoint, ``orchestrator run ... --or-resume``: the first one starts the job,
any later one (a new head after the old one was lost) continues it from its latest backup in the store. The
store must therefore be shared by every pod: a bucket (``gs://``, ``s3://``), never a local path.

The manifests in ``k8s/`` (base and overlays) and this module are two views of one design;
``tests/unit/test_k8s.py`` keeps the RayJob and ConfigMap of each overlay identical to what this renders.

Example (what ``orchestrator k8s render`` prints, for ``kubectl apply -f -``)::

    text = Path("jobs/quickstart.yaml").read_text()
    docs = render_rayjob(text, "quickstart", store_url="gs://my-bucket/store",
                         image="orchestrator:0.1.0-ray2.60.0-py311-cpu", cluster="cpu-test")
    print(dump_manifests(docs))
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from pathlib import PurePosixPath
from typing import Any

import yaml

from orchestrator.errors import UsageError
from orchestrator.k8s_checks import check_deadlines, check_image, check_job_name, check_namespace, check_queue
from orchestrator.k8s_checks import check_store_url as check_store_url
from orchestrator.k8s_checks import parse_duration as parse_duration
from orchestrator.k8s_profiles import CLUSTER_PROFILES as CLUSTER_PROFILES
from orchestrator.k8s_profiles import DEFAULT_CLUSTER, ClusterProfile, Manifest, Placement, placement, profile_named
from orchestrator.launcher import job_runtime_env
from orchestrator.spec import JobSpec
from orchestrator.spec_loader import parse_yaml, validate_spec
from orchestrator.store import STORE_ENV

RAY_VERSION = "2.60.0"
SPEC_DIR = "/etc/orchestrator"
SPEC_FILE = "spec.yaml"
# $(ORCHESTRATOR_STORE) is expanded by the kubelet in the submitter container's args (KubeRay puts the entrypoint
# into a `bash -c` there), from that container's env: the store URL lives in one place per manifest.
ENTRYPOINT = f"orchestrator run {SPEC_DIR}/{SPEC_FILE} --address auto --store $({STORE_ENV}) --or-resume"

# The image's user (k8s/Dockerfile: `ray`, uid 1000, group users 100). A number, so that the kubelet can check
# runAsNonRoot without trusting the image.
RUN_AS_USER = 1000
RUN_AS_GROUP = 100
DEFAULT_DEADLINE_S = 3 * 24 * 3600  # activeDeadlineSeconds: the whole RayJob, from when KubeRay starts it
DEFAULT_START_DEADLINE_S = 30 * 60  # preRunningDeadlineSeconds: until the head and the first workers run
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
SERVICE_ACCOUNT = "orchestrator"  # bucket access (GKE Workload Identity, EKS IRSA): made once per namespace
AUTH_SECRET = "ray-auth-token"  # Ray 2.60 token auth: made once per namespace, never in a manifest
AUTH_SECRET_KEY = "auth_token"  # the key KubeRay's authOptions.secretName expects
TERMINATION_GRACE_S = 60  # for SIGTERM from drains and scale-downs; a GKE spot reclaim allows about 15 s of it
DRAIN_TIMEOUT_S = 50  # Ray's SIGTERM drain window, kept under the grace period so teardown still fits
BACKOFF_LIMIT = 2  # RayJob retries, each on a new cluster
SUBMITTER_BACKOFF_LIMIT = 2  # retries of the submitter pod, which re-submits to a restarted head
TTL_AFTER_FINISHED_S = 600  # keep the finished cluster 10 minutes for logs and the dashboard
IDLE_TIMEOUT_S = 60  # the autoscaler removes a worker pod idle this long
MAX_RAYJOB_NAME = 47  # KubeRay: a RayCluster name (RayJob name + 6) is at most 53 characters
LABELS = {"app.kubernetes.io/name": "orchestrator"}
JOB_LABEL = "orchestrator/job"

logger = logging.getLogger(__name__)


def render_rayjob(
    spec_yaml_text: str,
    job_name: str,
    *,
    store_url: str,
    image: str,
    namespace: str = "default",
    cluster: str = DEFAULT_CLUSTER,
    source: str = "spec",
    deadline_s: int | None = DEFAULT_DEADLINE_S,
    start_deadline_s: int | None = DEFAULT_START_DEADLINE_S,
    queue: str | None = None,
) -> list[Manifest]:
    """The ConfigMap holding ``spec_yaml_text`` and the RayJob that runs it, for ``kubectl apply``.

    Args:
        spec_yaml_text: the job spec, stored verbatim in the ConfigMap and mounted at /etc/orchestrator/spec.yaml.
        job_name: the orchestrator job's name in the store; the RayJob's name is derived from it.
        store_url: the shared store (``gs://bucket/path`` or ``s3://bucket/path``) every pod reads and writes.
        image: the orchestrator image built from ``k8s/Dockerfile`` (Ray 2.60.0 with the orchestrator installed).
        namespace: where the ServiceAccount ``orchestrator`` and the Secret ``ray-auth-token`` already are.
        cluster: one of ``CLUSTER_PROFILES`` (where the pods run, how big they are).
        source: how to name the spec in error messages (its file name).
        deadline_s: ``activeDeadlineSeconds``, the most the RayJob may take (None: no limit).
        start_deadline_s: ``preRunningDeadlineSeconds``, the most the head and the first workers may take to
            run (None: no limit).
        queue: a Kueue LocalQueue: the RayJob is created suspended with the queue-name label, its cluster of
            fixed size (None: no Kueue).

    Raises:
        UsageError: a bad job name, store URL, image, namespace, cluster, deadline or queue, or a spec that
            needs files beside it.
        SpecError: the spec is not a valid job spec.

    Example::

        docs = render_rayjob(text, "quickstart", store_url="gs://my-bucket/store", image="orchestrator:0.1.0")
        [doc["kind"] for doc in docs]  # ['ConfigMap', 'RayJob']
    """
    profile = profile_named(cluster)
    store_url = _check_inputs(job_name, store_url, image, namespace, deadline_s, start_deadline_s, queue)
    spec, spec_name = _load_spec(spec_yaml_text, source, job_name)
    _check_fits_cluster(spec, profile)
    name = rayjob_name(job_name)
    labels = {**LABELS, JOB_LABEL: job_name}
    metadata: Manifest = {"name": name, "namespace": namespace, "labels": labels}
    config_map = _spec_config_map(metadata, spec_yaml_text)
    if queue is not None:
        labels[KUEUE_QUEUE_LABEL] = queue  # the RayJob's only: its ConfigMap is no workload
    name_option = None if spec_name == job_name else job_name  # the entrypoint's --name
    job = _job_fields(name_option, deadline_s, start_deadline_s, queued=queue is not None)
    job["submitterPodTemplate"] = _submitter_template(profile, image, store_url)
    job["rayClusterSpec"] = _ray_cluster_spec(
        spec, profile, image, store_url, spec_config_map_name(name), queued=queue is not None
    )
    return [config_map, {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": metadata, "spec": job}]


def _spec_config_map(metadata: Manifest, spec_yaml_text: str) -> Manifest:
    """The ConfigMap the head mounts the spec from: the RayJob's metadata, under the name ``RAYJOB-spec``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**copy.deepcopy(metadata), "name": spec_config_map_name(metadata["name"])},
        "data": {SPEC_FILE: spec_yaml_text},
    }


def _check_inputs(
    job_name: str,
    store_url: str,
    image: str,
    namespace: str,
    deadline_s: int | None,
    start_deadline_s: int | None,
    queue: str | None,
) -> str:
    """Every argument of ``render_rayjob`` but the spec checked (a UsageError naming the first bad one); the
    store URL."""
    check_job_name(job_name)
    store_url = check_store_url(store_url)
    check_image(image)
    check_namespace(namespace)
    check_deadlines(deadline_s, start_deadline_s)
    if queue is not None:
        check_queue(queue)
    return store_url


def _job_fields(
    name_option: str | None, deadline_s: int | None, start_deadline_s: int | None, *, queued: bool
) -> Manifest:
    """The RayJob's own fields, in the order they are written, before its submitter pod and Ray cluster:
    the entrypoint (with ``--name`` when the job's name is not the spec's), deadlines, retries, Kueue's suspend."""
    job: Manifest = {
        "entrypoint": ENTRYPOINT if name_option is None else f"{ENTRYPOINT} --name {name_option}",
        # the job-level runtime env `submit` gives a job: its variables and the warm pool's setup hook
        "runtimeEnvYAML": yaml.safe_dump(job_runtime_env(), sort_keys=True),
        "backoffLimit": BACKOFF_LIMIT,
    }
    if deadline_s is not None:
        job["activeDeadlineSeconds"] = deadline_s
    if start_deadline_s is not None:
        job["preRunningDeadlineSeconds"] = start_deadline_s
    if queued:
        job["suspend"] = True  # Kueue unsuspends it once the queue admits it
    job["shutdownAfterJobFinishes"] = True
    job["ttlSecondsAfterFinished"] = TTL_AFTER_FINISHED_S
    job["submitterConfig"] = {"backoffLimit": SUBMITTER_BACKOFF_LIMIT}
    return job


def dump_manifests(docs: list[Manifest]) -> str:
    """Manifests as one multi-document YAML stream (``---`` before each); multi-line strings as literal blocks."""
    return yaml.dump_all(
        docs, Dumper=_ManifestDumper, sort_keys=False, explicit_start=True, allow_unicode=True, width=120
    )


def rayjob_name(job_name: str) -> str:
    """A RayJob name for a (valid) job name: a DNS-1035 label of at most 47 characters, as KubeRay requires.

    A name starting with a digit gets the prefix ``job-``; a longer one is cut and ends in 6 hex digits of its
    hash, so two long names that share a beginning still get two RayJobs.
    """
    name = job_name if job_name[:1].isalpha() else f"job-{job_name}"
    if len(name) > MAX_RAYJOB_NAME:
        digest = hashlib.sha256(job_name.encode()).hexdigest()[:6]
        name = f"{name[: MAX_RAYJOB_NAME - len(digest) - 1].rstrip('-')}-{digest}"
    return name


def spec_config_map_name(rayjob: str) -> str:
    return f"{rayjob}-spec"


def _load_spec(text: str, source: str, job_name: str) -> tuple[JobSpec, object]:
    """The spec validated as `orchestrator run --name JOB` would take it, and the name it has itself.

    Refused if it names files beside it: only the spec is mounted on the cluster.
    """
    raw, lines = parse_yaml(text, source)
    spec = validate_spec({**raw, "name": job_name}, source=source, lines=lines)
    for field, path in spec.local_files():
        if not PurePosixPath(path).is_absolute():
            raise UsageError(
                f"{source}: {field}: got {path!r}, a path relative to the spec; on the cluster only the spec "
                f"itself is mounted ({SPEC_DIR}/{SPEC_FILE})",
                hint="upload data to the bucket and use its URL; add model code to the image (k8s/Dockerfile) "
                "and give its absolute path",
            )
    return spec, raw.get("name")


def _check_fits_cluster(spec: JobSpec, profile: ClusterProfile) -> None:
    """Refuse GPUs a cluster does not have; warn where a CPU-only job needs a node pool the profile assumes."""
    if spec.scaling.gpus_per_worker and not profile.gpus:
        gpu_clusters = ", ".join(name for name, other in CLUSTER_PROFILES.items() if other.gpus)
        raise UsageError(
            f"scaling.gpus_per_worker: got {spec.scaling.gpus_per_worker}, but cluster {profile.name!r} has no GPUs",
            hint=f"set gpus_per_worker: 0, or pick a cluster with GPUs: {gpu_clusters}",
        )
    if not spec.scaling.gpus_per_worker and profile.gpu_only:
        cpu_clusters = ", ".join(name for name, other in CLUSTER_PROFILES.items() if not other.gpu_only)
        raise UsageError(
            f"scaling.gpus_per_worker: got 0, but cluster {profile.name!r} has only GPU nodes for workers: a "
            "CPU-only worker would hold a GPU it never uses",
            hint=f"set gpus_per_worker: 1 or more, or pick a cluster with CPU workers: {cpu_clusters}",
        )
    if not spec.scaling.gpus_per_worker and profile.gpus and profile.spot_label:
        key, value = profile.spot_label
        guard = (
            f"nodes labelled {' or '.join(profile.gpu_labels)}"
            if profile.gpu_labels_sure
            else f"nodes tainted nvidia.com/gpu (taint your GPU nodes: {profile.name} has no label every GPU "
            "node carries)"
        )
        logger.warning(
            "scaling.gpus_per_worker is 0: the %d workers go to spot nodes without GPUs (%s=%s, never %s), not to "
            "the spot GPU pool; the cluster needs a spot CPU node pool, or use --cluster cpu-test",
            spec.scaling.workers,
            key,
            value,
            guard,
        )


def pod_security_context() -> Manifest:
    """Pod Security "restricted" at the pod level: a non-root user by number, the runtime's seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_GROUP,
        "fsGroup": RUN_AS_GROUP,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Manifest:
    """Pod Security "restricted" for each container: no privilege escalation, no Linux capabilities."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _resources(cpus: int, gib: int, gpus: int, guaranteed: bool) -> Manifest:
    limits: dict[str, str] = {"cpu": str(cpus), "memory": f"{gib}Gi"}
    requests = dict(limits) if guaranteed else {"cpu": f"{cpus * 500}m", "memory": f"{gib * 512}Mi"}
    if gpus:
        limits["nvidia.com/gpu"] = requests["nvidia.com/gpu"] = str(gpus)
    return {"limits": limits, "requests": requests}


def _ray_env(profile: ClusterProfile, store_url: str) -> list[Manifest]:
    """The environment of every Ray container (head and workers): no secret value, only a reference to one."""
    env: list[Manifest] = [
        {"name": "TF_USE_LEGACY_KERAS", "value": "1"},
        {"name": STORE_ENV, "value": store_url},
        *_auth_env(),
        {"name": "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "value": str(DRAIN_TIMEOUT_S)},
    ]
    env.extend({"name": name, "value": value} for name, value in profile.extra_env)
    return env


def _auth_env() -> list[Manifest]:
    token = {"secretKeyRef": {"name": AUTH_SECRET, "key": AUTH_SECRET_KEY}}
    return [{"name": "RAY_AUTH_MODE", "value": "token"}, {"name": "RAY_AUTH_TOKEN", "valueFrom": token}]


def _pod(containers: list[Manifest], where: Placement, **fields: Any) -> Manifest:
    """A pod spec: ``fields``, the restricted security context, the containers, then where it may run."""
    pod_spec: Manifest = {**fields, "securityContext": pod_security_context(), "containers": containers}
    for container in containers:
        container["securityContext"] = container_security_context()
    if where.affinity:
        pod_spec["affinity"] = copy.deepcopy(where.affinity)
    if where.selector:
        pod_spec["nodeSelector"] = dict(where.selector)
    if where.tolerations:
        pod_spec["tolerations"] = [dict(toleration) for toleration in where.tolerations]
    return pod_spec


def _ray_cluster_spec(
    spec: JobSpec, profile: ClusterProfile, image: str, store_url: str, config_map: str, *, queued: bool
) -> Manifest:
    """Autoscaled from the first workers up to ``scaling.workers``; of fixed size under Kueue, which admits a
    job whole (its quota is the worker group's ``replicas``) and refuses a RayJob with the autoscaler on."""
    cluster: Manifest = {"rayVersion": RAY_VERSION, "enableInTreeAutoscaling": not queued}
    if not queued:
        cluster["autoscalerOptions"] = {
            "idleTimeoutSeconds": IDLE_TIMEOUT_S,
            "upscalingMode": "Default",
            "securityContext": container_security_context(),  # the autoscaler sidecar KubeRay adds to the head
        }
    cluster["authOptions"] = {"mode": "token", "secretName": AUTH_SECRET}
    cluster["headGroupSpec"] = _head_group(profile, image, store_url, config_map)
    cluster["workerGroupSpecs"] = [_worker_group(spec, profile, image, store_url, queued=queued)]
    return cluster


def _head_group(profile: ClusterProfile, image: str, store_url: str, config_map: str) -> Manifest:
    """The head: GCS, dashboard, autoscaler and the job's driver; no training (num-cpus 0), never on spot or GPU
    nodes, and never evicted by the cluster autoscaler to pack nodes (losing it restarts the job's driver)."""
    container = {
        "name": "ray-head",
        "image": image,
        "ports": [
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
        ],
        "env": _ray_env(profile, store_url),
        "resources": _resources(profile.head_cpus, profile.head_gib, 0, profile.guaranteed),
        "volumeMounts": [{"name": "job-spec", "mountPath": SPEC_DIR, "readOnly": True}],
    }
    pod_spec = _pod(
        [container],
        placement(profile, "head"),
        serviceAccountName=SERVICE_ACCOUNT,
        terminationGracePeriodSeconds=TERMINATION_GRACE_S,
        volumes=[{"name": "job-spec", "configMap": {"name": config_map}}],
    )
    return {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": {"metadata": {"annotations": {SAFE_TO_EVICT: "false"}}, "spec": pod_spec},
    }


def _worker_group(spec: JobSpec, profile: ClusterProfile, image: str, store_url: str, *, queued: bool) -> Manifest:
    """One Ray worker pod per Ray Train worker, on spot nodes that fit it.

    The first ``replicas`` pods (all ``workers``, or ``min_workers`` of an elastic job) are made with the cluster,
    so the RayJob's start deadline covers waiting for them: KubeRay counts the cluster ready, and starts the
    job, only when they run. The autoscaler adds the others of an elastic job and replaces reclaimed ones.
    """
    cpus = max(1, math.ceil(spec.scaling.cpus_per_worker))
    gpus = spec.scaling.gpus_per_worker
    container = {
        "name": "ray-worker",
        "image": image,
        "env": _ray_env(profile, store_url),
        "resources": _resources(cpus, cpus * profile.gib_per_cpu, gpus, profile.guaranteed),
    }
    where = placement(profile, "worker", gpus)
    pod_spec = _pod(
        [container], where, serviceAccountName=SERVICE_ACCOUNT, terminationGracePeriodSeconds=TERMINATION_GRACE_S
    )
    workers = spec.scaling.workers
    first = workers if queued or spec.scaling.min_workers is None else min(spec.scaling.min_workers, workers)
    return {
        "groupName": where.group,
        "replicas": first,
        "minReplicas": first,
        "maxReplicas": workers,
        "rayStartParams": {},
        "template": {"spec": pod_spec},
    }


def _submitter_template(profile: ClusterProfile, image: str, store_url: str) -> Manifest:
    """The pod that runs `ray job submit` (KubeRay adds the command): on-demand, with the store for $(...)."""
    container = {
        "name": "ray-job-submitter",
        "image": image,
        "env": [{"name": STORE_ENV, "value": store_url}, *_auth_env()],
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "200m", "memory": "256Mi"}},
    }
    return {"spec": _pod([container], placement(profile, "submitter"), restartPolicy="Never")}


class _ManifestDumper(yaml.SafeDumper):
    """Writes multi-line strings (a spec in a ConfigMap) as literal blocks, so they read like the spec file."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_ManifestDumper.add_representer(str, _represent_str)
