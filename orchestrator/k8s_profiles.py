"""The Kubernetes clusters ``orchestrator k8s render`` knows (``CLUSTER_PROFILES``) and where each kind of pod may
run on one (``placement``): the head and the submitter on on-demand nodes without GPUs, the workers on spot
nodes, with GPUs or (never holding a GPU it does not use) without. ``orchestrator.k8s`` renders the pods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.errors import UsageError

Manifest = dict[str, Any]


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


def profile_named(cluster: str) -> ClusterProfile:
    if cluster not in CLUSTER_PROFILES:
        raise UsageError(f"cluster: got {cluster!r}, must be one of {', '.join(CLUSTER_PROFILES)}")
    return CLUSTER_PROFILES[cluster]


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
