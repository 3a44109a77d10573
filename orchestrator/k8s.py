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
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

from orchestrator.errors import UsageError
from orchestrator.launcher import job_runtime_env
from orchestrator.spec import JOB_NAME_PATTERN, JOB_NAME_RULE, JobSpec
from orchestrator.spec_loader import parse_yaml, validate_spec
from orchestrator.store import STORE_ENV

Manifest = dict[str, Any]

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
STORE_SCHEMES = ("gs", "s3")
LABELS = {"app.kubernetes.io/name": "orchestrator"}
JOB_LABEL = "orchestrator/job"

# A bucket and a path of plain characters: the URL is expanded into a shell command line (see ENTRYPOINT).
_STORE_URL = re.compile(r"^[a-z0-9]+://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_SECONDS_PER = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_INT32_MAX = 2**31 - 1
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterProfile:
    """Where a job's pods run and how big they are, for one kind of Kubernetes cluster.

    ``spot_label`` (key, value) is the workers' node selector (the spot nodes, or a GKE ComputeClass that
    prefers them) and ``spot_taint`` the taint those nodes carry (None: none); ``head_avoids`` (key, value)
    marks the nodes the head and the submitter must not use (spot); ``gpu_labels`` are labels GPU nodes carry,
    ``gpu_labels_sure`` whether every GPU node carries one; ``gpu_only``: the workers' nodes all have GPUs, so a
    CPU-only job is refused. From these: the head and the submitter avoid spot and GPU nodes; GPU workers
    select spot nodes and tolerate the spot and GPU taints; CPU-only workers select spot nodes, tolerate only
    the spot taint and avoid GPU nodes. Pod sizes: the head gets ``head_cpus`` and ``head_gib``; a worker gets
    ``ceil(cpus_per_worker)`` CPUs, ``gib_per_cpu`` GiB per CPU and the spec's GPUs. ``guaranteed``: requests
    equal limits (Guaranteed QoS); otherwise requests are half the limits, so a small test cluster fits.
    ``extra_env`` is added to the head and the workers.
    """

    name: str
    summary: str
    spot_label: tuple[str, str] | None
    spot_taint: dict[str, str] | None
    head_avoids: tuple[str, str] | None
    gpu_labels: tuple[str, ...]
    gpu_labels_sure: bool = True
    head_cpus: int = 2
    head_gib: int = 8
    gib_per_cpu: int = 4
    guaranteed: bool = True
    gpus: bool = True
    extra_env: tuple[tuple[str, str], ...] = ()
    gpu_only: bool = False


@dataclass(frozen=True)
class Placement:
    """Where one kind of pod may run: its worker group name (workers only), node selector, tolerations and
    required node affinity."""

    group: str
    selector: dict[str, str]
    tolerations: tuple[dict[str, str], ...]
    affinity: Manifest | None


_GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _spot_taint(key: str, value: str) -> dict[str, str]:
    return {"key": key, "operator": "Equal", "value": value, "effect": "NoSchedule"}


CLUSTER_PROFILES: dict[str, ClusterProfile] = {
    profile.name: profile
    for profile in (
        ClusterProfile(
            name="gke-spot-gpu",
            summary="GKE: head on on-demand nodes, GPU workers on a Spot node pool (k8s/overlays/gke-spot-gpu)",
            spot_label=("cloud.google.com/gke-spot", "true"),
            head_avoids=("cloud.google.com/gke-spot", "true"),
            spot_taint=_spot_taint("cloud.google.com/gke-spot", "true"),
            gpu_labels=("cloud.google.com/gke-accelerator",),
        ),
        ClusterProfile(
            name="gke-compute-class",
            summary="GKE: GPU workers through the ComputeClass spot-gpu (Spot GPUs in any zone, else on-demand "
            "ones; k8s/README.md), head on on-demand nodes",
            spot_label=("cloud.google.com/compute-class", "spot-gpu"),
            spot_taint=_spot_taint("cloud.google.com/compute-class", "spot-gpu"),
            head_avoids=("cloud.google.com/gke-spot", "true"),
            gpu_labels=("cloud.google.com/gke-accelerator",),
            gpu_only=True,
        ),
        ClusterProfile(
            name="eks-spot-gpu",
            summary="EKS: head on on-demand nodes, GPU workers on a Spot managed node group",
            spot_label=("eks.amazonaws.com/capacityType", "SPOT"),
            head_avoids=("eks.amazonaws.com/capacityType", "SPOT"),
            spot_taint=None,
            gpu_labels=("nvidia.com/gpu.present",),  # NVIDIA's GPU feature discovery; EKS itself sets none
            gpu_labels_sure=False,
        ),
        ClusterProfile(
            name="aks-spot-gpu",
            summary="AKS: head on regular nodes, GPU workers on a Spot node pool",
            spot_label=("kubernetes.azure.com/scalesetpriority", "spot"),
            head_avoids=("kubernetes.azure.com/scalesetpriority", "spot"),
            spot_taint=_spot_taint("kubernetes.azure.com/scalesetpriority", "spot"),
            gpu_labels=("kubernetes.azure.com/accelerator",),
        ),
        ClusterProfile(
            name="cpu-test",
            summary="kind/minikube: CPU only, no spot, small pods, in-cluster GCS emulator (k8s/overlays/cpu-test)",
            spot_label=None,
            spot_taint=None,
            head_avoids=None,
            gpu_labels=(),
            head_cpus=1,
            head_gib=3,
            gib_per_cpu=2,
            guaranteed=False,
            gpus=False,
            extra_env=(
                ("STORAGE_EMULATOR_HOST", "http://gcs-emulator:9023"),
                ("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false"),
                ("NO_GCE_CHECK", "true"),
            ),
        ),
    )
}
DEFAULT_CLUSTER = "gke-spot-gpu"


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
    profile = _profile(cluster)
    _check_job_name(job_name)
    store_url = check_store_url(store_url)
    _check_image(image)
    _check_namespace(namespace)
    _check_deadlines(deadline_s, start_deadline_s)
    if queue is not None:
        _check_queue(queue)
    spec, spec_name = _load_spec(spec_yaml_text, source, job_name)
    _check_fits_cluster(spec, profile)
    name = rayjob_name(job_name)
    entrypoint = ENTRYPOINT if spec_name == job_name else f"{ENTRYPOINT} --name {job_name}"
    labels = {**LABELS, JOB_LABEL: job_name}
    metadata: Manifest = {"name": name, "namespace": namespace, "labels": labels}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**copy.deepcopy(metadata), "name": spec_config_map_name(name)},
        "data": {SPEC_FILE: spec_yaml_text},
    }
    job: Manifest = {
        "entrypoint": entrypoint,
        # the job-level runtime env `submit` gives a job: its variables and the warm pool's setup hook
        "runtimeEnvYAML": yaml.safe_dump(job_runtime_env(), sort_keys=True),
        "backoffLimit": BACKOFF_LIMIT,
    }
    if deadline_s is not None:
        job["activeDeadlineSeconds"] = deadline_s
    if start_deadline_s is not None:
        job["preRunningDeadlineSeconds"] = start_deadline_s
    if queue is not None:
        labels[KUEUE_QUEUE_LABEL] = queue  # the RayJob's only: its ConfigMap is no workload
        job["suspend"] = True  # Kueue unsuspends it once the queue admits it
    job.update(
        {
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            "submitterConfig": {"backoffLimit": SUBMITTER_BACKOFF_LIMIT},
            "submitterPodTemplate": _submitter_template(profile, image, store_url),
            "rayClusterSpec": _ray_cluster_spec(
                spec, profile, image, store_url, spec_config_map_name(name), queued=queue is not None
            ),
        }
    )
    return [config_map, {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": metadata, "spec": job}]


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


def parse_duration(text: str, option: str) -> int | None:
    """Seconds from ``90m``, ``36h``, ``3d``, ``600s`` or ``600``; None from ``none`` (no deadline)."""
    if text.strip().lower() == "none":
        return None
    match = _DURATION.match(text.strip())
    seconds = int(match.group(1)) * _SECONDS_PER[match.group(2)] if match else 0
    if not 0 < seconds <= _INT32_MAX:
        raise UsageError(
            f"{option}: got {text!r}, must be a positive duration such as 1800, 90m, 36h or 3d (at most "
            f"{_INT32_MAX} s), or none"
        )
    return seconds


def check_store_url(store_url: str) -> str:
    """The store URL if every pod of a cluster can reach it (a bucket); else a UsageError saying what is accepted."""
    scheme = store_url.partition("://")[0] if "://" in store_url else ""
    if scheme in ("", "file", "local", "memory"):
        why = "a local path: every pod of a multi-node cluster needs the same, shared store"
    elif scheme not in STORE_SCHEMES:
        why = f"a {scheme}:// store, which orchestrator does not support on Kubernetes"
    elif not _STORE_URL.match(store_url):
        why = "not a bucket name and a path of plain characters (letters, digits, '.', '_', '-', '/')"
    else:
        return store_url
    accepted = " or ".join(f"{name}://bucket/path" for name in STORE_SCHEMES)
    raise UsageError(
        f"store: got {store_url!r}, {why}; accepted: {accepted}",
        hint="create a bucket the ServiceAccount 'orchestrator' can write (see k8s/README.md) and pass its URL",
    )


def _profile(cluster: str) -> ClusterProfile:
    if cluster not in CLUSTER_PROFILES:
        raise UsageError(f"cluster: got {cluster!r}, must be one of {', '.join(CLUSTER_PROFILES)}")
    return CLUSTER_PROFILES[cluster]


def _check_job_name(job_name: str) -> None:
    if not re.fullmatch(JOB_NAME_PATTERN, job_name):
        raise UsageError(f"job name: got {job_name!r}, must be {JOB_NAME_RULE}")


def _check_image(image: str) -> None:
    if not _IMAGE.match(image):
        raise UsageError(
            f"image: got {image!r}, must be an image reference such as "
            "us-docker.pkg.dev/PROJECT/orchestrator/orchestrator:0.1.0-ray2.60.0-py311-gpu",
            hint="build it with k8s/Dockerfile (see k8s/README.md)",
        )


def _check_namespace(namespace: str) -> None:
    if not _DNS_LABEL.match(namespace):
        raise UsageError(f"namespace: got {namespace!r}, must be 1-63 characters of a-z, 0-9 and '-'")


def _check_queue(queue: str) -> None:
    if not _DNS_LABEL.match(queue):
        raise UsageError(
            f"queue: got {queue!r}, must be the name of a Kueue LocalQueue: 1-63 characters of a-z, 0-9 and '-'"
        )


def _check_deadlines(deadline_s: int | None, start_deadline_s: int | None) -> None:
    for option, value in (
        ("deadline (--deadline)", deadline_s),
        ("start deadline (--start-deadline)", start_deadline_s),
    ):
        if value is not None and not 0 < value <= _INT32_MAX:
            raise UsageError(f"{option}: got {value!r} s, must be 1 to {_INT32_MAX} seconds, or none")
    if deadline_s is not None and start_deadline_s is not None and start_deadline_s >= deadline_s:
        raise UsageError(
            f"start deadline (--start-deadline): got {start_deadline_s} s, must be shorter than the deadline "
            f"(--deadline, {deadline_s} s), which already ends a job that has not started"
        )


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


def placement(profile: ClusterProfile, role: str, gpus: int = 0) -> Placement:
    """Where a pod of ``role`` (head, submitter or worker) may run on ``profile``.

    The head and the submitter: not on spot nodes, not on GPU nodes. A worker with GPUs: the spot nodes, with
    the spot and GPU taints tolerated. A worker without: the spot nodes, never a GPU node (the GPU taint not
    tolerated, and the profile's GPU labels absent), so that it holds no GPU it does not use.
    """
    no_gpu = [{"key": label, "operator": "DoesNotExist"} for label in profile.gpu_labels]
    if role in ("head", "submitter"):
        avoid_spot = (
            [{"key": profile.head_avoids[0], "operator": "NotIn", "values": [profile.head_avoids[1]]}]
            if profile.head_avoids
            else []
        )
        return Placement("", {}, (), _required(avoid_spot + no_gpu))
    if profile.spot_label is None:
        return Placement("cpu", {}, (), None)
    selector = dict([profile.spot_label])
    spot_taints = (profile.spot_taint,) if profile.spot_taint else ()
    if gpus:
        return Placement("spot-gpu", selector, (*spot_taints, _GPU_TAINT), None)
    return Placement("spot-cpu", selector, spot_taints, _required(no_gpu))


def _required(expressions: list[Manifest]) -> Manifest | None:
    """A required node affinity: one term, every expression must hold (None for no expressions)."""
    if not expressions:
        return None
    term = {"matchExpressions": expressions}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


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
