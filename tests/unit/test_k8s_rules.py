"""What a platform engineer checks in the KubeRay manifests (k8s/ and ``orchestrator k8s render``), rule by rule,
each with a breakage it catches:

- placement: a pod goes only to nodes that fit what it asks for (a CPU-only worker never tolerates the GPU taint
  and keeps off GPU-labelled nodes; a GPU worker tolerates it; the head and the submitter avoid spot and GPU
  nodes), with a warning where a profile needs a node pool its worked example does not make;
- Pod Security "restricted" on every pod, including the containers KubeRay adds (the autoscaler sidecar takes
  ``autoscalerOptions.securityContext``, the workers' ``wait-gcs-ready`` init container a copy of the Ray
  container's);
- the RayJob's deadlines, Kueue's fields, the head's protection from eviction;
- the image: CUDA once, pinned versions, a numeric non-root user, a build context of only what it copies.

Every rendered object is also validated against the real schemas (tests/unit/test_k8s.py's ``validate``: KubeRay's
CRDs from $KUBERAY_CRD_SCHEMAS, skipped with the way to get them when unset, and kubernetes-validate).
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import logging
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator import k8s
from orchestrator.cli import app
from orchestrator.errors import UsageError
from tests.unit.test_k8s import (
    CPU_SPEC,
    GPU_SPEC_TEXT,
    K8S,
    OVERLAYS,
    Manifest,
    all_docs,
    cluster_specs,
    objects,
    only,
    pod_templates,
    render,
    validate,
)

GPU_PROFILES = [name for name, profile in k8s.CLUSTER_PROFILES.items() if profile.gpus]
GPU_TAINT_KEY = "nvidia.com/gpu"


def every_doc() -> list[tuple[str, Manifest]]:
    """The overlays' objects, and each profile's render of a GPU spec and (where it takes one) a CPU-only spec,
    plain and queued."""
    docs = list(all_docs())
    for profile in GPU_PROFILES:
        if k8s.CLUSTER_PROFILES[profile].gpu_only:
            continue
        for queue in (None, "team-a"):
            docs += [(f"render {profile} cpu queue={queue}", doc) for doc in render(cluster=profile, queue=queue)]
    docs += [
        ("render gke-spot-gpu gpu queued", doc) for doc in render(GPU_SPEC_TEXT, cluster="gke-spot-gpu", queue="q")
    ]
    return docs


def profile_of(where: str) -> k8s.ClusterProfile:
    name = where.split()[1] if where.startswith("render") else OVERLAYS[where]
    return k8s.CLUSTER_PROFILES[name]


# ------------------------------------------------------------------------------------------------ placement
def required_expressions(pod: Manifest) -> list[Manifest]:
    affinity = pod.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if not affinity:
        return []
    (term,) = affinity["nodeSelectorTerms"]  # one term: every expression must hold
    expressions: list[Manifest] = term["matchExpressions"]
    return expressions


def placement_problems(pod: Manifest, profile: k8s.ClusterProfile) -> list[str]:
    """Where ``pod`` could land on a node that does not fit what it asks for, on ``profile``'s cluster."""
    problems = []
    gpus = any(container["resources"]["limits"].get(GPU_TAINT_KEY) for container in pod["containers"])
    tolerated = {toleration.get("key") for toleration in pod.get("tolerations", [])}
    expressions = required_expressions(pod)
    on_spot = profile.spot_label is not None and pod.get("nodeSelector", {}).get(profile.spot_label[0])
    if gpus and GPU_TAINT_KEY not in tolerated:
        problems.append("asks for GPUs but does not tolerate the GPU taint")
    if not gpus:
        if GPU_TAINT_KEY in tolerated:
            problems.append("tolerates the GPU taint without asking for a GPU: it could hold a GPU node")
        problems += [
            f"may land on a GPU node: no {label} DoesNotExist"
            for label in profile.gpu_labels
            if {"key": label, "operator": "DoesNotExist"} not in expressions
        ]
    if on_spot and profile.spot_taint and profile.spot_taint["key"] not in tolerated:
        problems.append("selects spot nodes without tolerating their taint")
    return problems


def role_pods(doc: Manifest) -> list[tuple[str, Manifest]]:
    pods = []
    for spec in cluster_specs(doc):
        pods.append(("head", spec["headGroupSpec"]["template"]["spec"]))
        pods += [("worker", group["template"]["spec"]) for group in spec["workerGroupSpecs"]]
    if doc["kind"] == "RayJob":
        pods.append(("submitter", doc["spec"]["submitterPodTemplate"]["spec"]))
    return pods


def test_every_pod_fits_the_nodes_it_may_land_on() -> None:
    for where, doc in every_doc():
        profile = profile_of(where)
        for role, pod in role_pods(doc):
            assert placement_problems(pod, profile) == [], f"{where} {role}"
            if role != "worker" and profile.head_avoids:  # the head and the submitter: never on spot
                key, value = profile.head_avoids
                assert {"key": key, "operator": "NotIn", "values": [value]} in required_expressions(pod), where


def test_a_cpu_only_spec_on_a_spot_gpu_profile_holds_no_gpu_node(caplog: pytest.LogCaptureFixture) -> None:
    """The issue's case: a CPU-only spec rendered for gke-spot-gpu used to get a worker with the nvidia.com/gpu
    toleration, which would hold a spot GPU node without using its GPU."""
    with caplog.at_level(logging.WARNING, logger="orchestrator.k8s"):
        _, rayjob = render(CPU_SPEC, cluster="gke-spot-gpu")
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    assert group["groupName"] == "spot-cpu"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
    assert [toleration["key"] for toleration in pod["tolerations"]] == ["cloud.google.com/gke-spot"]
    assert required_expressions(pod) == [{"key": "cloud.google.com/gke-accelerator", "operator": "DoesNotExist"}]
    assert GPU_TAINT_KEY not in yaml.safe_dump(group)
    (warning,) = caplog.messages
    assert "gpus_per_worker is 0" in warning and "spot CPU node pool" in warning and "\n" not in warning


def test_a_gpu_spec_goes_to_the_spot_gpu_pool_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.k8s"):
        _, rayjob = render(GPU_SPEC_TEXT, cluster="gke-spot-gpu")
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "spot-gpu" and caplog.messages == []
    assert {toleration["key"] for toleration in group["template"]["spec"]["tolerations"]} == {
        "cloud.google.com/gke-spot",
        GPU_TAINT_KEY,
    }


def test_a_cpu_only_spec_is_refused_where_workers_only_get_gpu_nodes() -> None:
    """gke-compute-class's workers select a ComputeClass of GPU machines: a CPU-only worker cannot be placed
    there without holding a GPU, so render refuses it in one line."""
    with pytest.raises(UsageError, match="has only GPU nodes for workers") as refused:
        render(CPU_SPEC, cluster="gke-compute-class")
    assert "\n" not in refused.value.message and "gke-spot-gpu" in (refused.value.hint or "")
    _, rayjob = render(GPU_SPEC_TEXT, cluster="gke-compute-class")
    pod = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/compute-class": "spot-gpu"}
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert {"key": "cloud.google.com/gke-spot", "operator": "NotIn", "values": ["true"]} in required_expressions(head)


def test_where_no_label_marks_every_gpu_node_the_warning_says_to_taint_them(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.k8s"):
        render(CPU_SPEC, cluster="eks-spot-gpu")
    (warning,) = caplog.messages
    assert "taint your GPU nodes" in warning and "eks-spot-gpu" in warning


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("tolerate the GPU taint", "tolerates the GPU taint without asking for a GPU"),
        ("drop the GPU-label rule", "may land on a GPU node"),
        ("drop the spot toleration", "without tolerating their taint"),
    ],
)
def test_the_placement_check_bites(change: str, problem: str) -> None:
    _, rayjob = render(CPU_SPEC, cluster="gke-spot-gpu")
    pod = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    if change == "tolerate the GPU taint":
        pod["tolerations"].append({"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    elif change == "drop the GPU-label rule":
        del pod["affinity"]
    else:
        pod["tolerations"] = []
    assert any(problem in line for line in placement_problems(pod, k8s.CLUSTER_PROFILES["gke-spot-gpu"]))


def test_the_cli_prints_the_placement_warning_on_stderr(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(CPU_SPEC)
    result = CliRunner().invoke(app, ["k8s", "render", str(spec), "--store", "gs://bucket/store", "--image", "i:1"])
    assert result.exit_code == 0 and "kind: RayJob" in result.stdout
    assert "warning: scaling.gpus_per_worker is 0" in result.stderr and "warning" not in result.stdout


# ------------------------------------------------------------------------------------ Pod Security restricted
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim"}
RESTRICTED_VOLUMES |= {"projected", "secret"}


def as_kuberay_makes_it(doc: Manifest, role: str, pod: Manifest) -> Manifest:
    """The pod KubeRay creates from a template: the head gets the autoscaler sidecar (its securityContext from
    ``autoscalerOptions``), a worker the ``wait-gcs-ready`` init container (a copy of the Ray container's)."""
    pod = copy.deepcopy(pod)
    spec = cluster_specs(doc)[0] if cluster_specs(doc) else {}
    if role == "head" and spec.get("enableInTreeAutoscaling"):
        sidecar = {"name": "autoscaler"}
        if "securityContext" in spec.get("autoscalerOptions", {}):
            sidecar["securityContext"] = spec["autoscalerOptions"]["securityContext"]
        pod["containers"].append(sidecar)
    if role == "worker":
        init = {"name": "wait-gcs-ready", "securityContext": copy.deepcopy(pod["containers"][0].get("securityContext"))}
        pod["initContainers"] = [*pod.get("initContainers", []), init]
    return pod


def restricted_problems(pod: Manifest) -> list[str]:
    """The Pod Security Standards' "restricted" checks (baseline's included) a pod spec fails."""
    problems = []
    pod_context = pod.get("securityContext", {})
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"pod: {flag}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    if pod_context.get("runAsUser") == 0:
        problems.append("pod: runAsUser 0")
    for container in containers:
        context = container.get("securityContext") or {}
        name = container["name"]
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{name}: runs as root")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp!r}")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


def restricted_pods(doc: Manifest) -> list[tuple[str, Manifest]]:
    if doc["kind"] == "Deployment":
        return [("pod", doc["spec"]["template"]["spec"])]
    return [(role, as_kuberay_makes_it(doc, role, pod)) for role, pod in role_pods(doc)]


def test_every_pod_passes_pod_security_restricted() -> None:
    checked = 0
    for where, doc in every_doc():
        for role, pod in restricted_pods(doc):
            assert restricted_problems(pod) == [], f"{where} {role}"
            checked += 1
    assert checked > 40


def test_the_user_is_the_images_and_numeric() -> None:
    """runAsNonRoot can only be checked by the kubelet against a numeric user: the manifests name the image's."""
    dockerfile = (K8S / "Dockerfile").read_text()
    assert f"USER {k8s.RUN_AS_USER}:{k8s.RUN_AS_GROUP}\n" in dockerfile
    assert f"--uid {k8s.RUN_AS_USER} --gid {k8s.RUN_AS_GROUP}" in dockerfile
    for where, doc in every_doc():
        for template in pod_templates(doc):
            context = template["spec"]["securityContext"]
            assert (context["runAsUser"], context["runAsGroup"]) == (k8s.RUN_AS_USER, k8s.RUN_AS_GROUP), where


def broken_for_restricted(change: str) -> tuple[Manifest, str, Manifest]:
    docs = render(cluster="gke-spot-gpu") if change != "emulator as root" else objects("cpu-test")
    if change == "emulator as root":
        deployment = only(docs, "Deployment")
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0
        return deployment, "pod", deployment["spec"]["template"]["spec"]
    rayjob = docs[1]
    cluster = rayjob["spec"]["rayClusterSpec"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    if change == "no container context":
        del worker["containers"][0]["securityContext"]
    elif change == "no autoscaler context":
        del cluster["autoscalerOptions"]["securityContext"]
    elif change == "no seccomp":
        del head["securityContext"]["seccompProfile"]
    elif change == "root user":
        head["securityContext"]["runAsUser"] = 0
    elif change == "hostPath volume":
        head["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    elif change == "added capability":
        worker["containers"][0]["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
    role = "worker" if change in ("no container context", "added capability") else "head"
    return rayjob, role, worker if role == "worker" else head


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("no container context", "ray-worker: allowPrivilegeEscalation is not false"),
        ("no container context", "wait-gcs-ready: capabilities do not drop ALL"),
        ("no autoscaler context", "autoscaler: allowPrivilegeEscalation is not false"),
        ("no seccomp", "ray-head: seccompProfile None"),
        ("root user", "pod: runAsUser 0"),
        ("hostPath volume", "volume host: ['hostPath']"),
        ("added capability", "ray-worker: adds capabilities"),
        ("emulator as root", "gcs-emulator: runs as root"),
    ],
)
def test_the_restricted_check_bites(change: str, problem: str) -> None:
    doc, role, pod = broken_for_restricted(change)
    made = pod if doc["kind"] == "Deployment" else as_kuberay_makes_it(doc, role, pod)
    assert problem in restricted_problems(made)


# ------------------------------------------------------------------------------------------------ deadlines
def test_every_rayjob_has_both_deadlines_by_default() -> None:
    for where, doc in every_doc():
        if doc["kind"] == "RayJob":
            spec = doc["spec"]
            assert spec["activeDeadlineSeconds"] == k8s.DEFAULT_DEADLINE_S, where
            assert spec["preRunningDeadlineSeconds"] == k8s.DEFAULT_START_DEADLINE_S, where


def test_the_start_deadline_covers_waiting_for_the_workers() -> None:
    """KubeRay starts the job (and stops the start clock) once the cluster is ready: all ``replicas`` running.
    So a job's cluster starts with its workers (an elastic one with min_workers), not from zero."""
    for where, doc in every_doc():
        if doc["kind"] == "RayJob":
            (group,) = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
            assert group["replicas"] == group["minReplicas"] == group["maxReplicas"], where
    elastic = CPU_SPEC.replace("cpus_per_worker: 1}", "cpus_per_worker: 1, min_workers: 1}")
    (group,) = render(elastic)[1]["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (1, 1, 2)


def test_deadlines_can_be_set_or_turned_off() -> None:
    _, rayjob = render(deadline_s=7200, start_deadline_s=600)
    assert (rayjob["spec"]["activeDeadlineSeconds"], rayjob["spec"]["preRunningDeadlineSeconds"]) == (7200, 600)
    _, unlimited = render(deadline_s=None, start_deadline_s=None)
    assert not {"activeDeadlineSeconds", "preRunningDeadlineSeconds"} & set(unlimited["spec"])
    validate(rayjob)
    validate(unlimited)


@pytest.mark.parametrize(
    ("deadline", "start", "problem"),
    [
        (600, 600, "must be shorter than the deadline"),
        (0, None, r"deadline \(--deadline\): got 0 s"),
        (None, -5, "got -5 s"),
    ],
)
def test_bad_deadlines_are_refused(deadline: int | None, start: int | None, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        render(deadline_s=deadline, start_deadline_s=start)


def test_the_crd_schema_refuses_a_zero_start_deadline() -> None:
    _, rayjob = render()
    rayjob["spec"]["preRunningDeadlineSeconds"] = 0
    with pytest.raises(jsonschema.ValidationError, match="preRunningDeadlineSeconds"):
        validate(rayjob)


@pytest.mark.parametrize(
    ("text", "seconds"), [("1800", 1800), ("600s", 600), ("90m", 5400), ("36h", 129600), ("3d", 259200), ("none", None)]
)
def test_durations(text: str, seconds: int | None) -> None:
    assert k8s.parse_duration(text, "--deadline") == seconds


@pytest.mark.parametrize("text", ["0", "-1", "1.5h", "3w", "", "forever", "99999999999"])
def test_a_bad_duration_is_one_line(text: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"--deadline: got {text!r}")):
        k8s.parse_duration(text, "--deadline")


def test_the_cli_takes_the_deadlines_and_the_queue(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(GPU_SPEC_TEXT)
    base = ["k8s", "render", str(spec), "--store", "gs://bucket/store", "--image", "i:1"]
    result = CliRunner().invoke(app, [*base, "--deadline", "12h", "--start-deadline", "none", "--queue", "gpu"])
    assert result.exit_code == 0, result.stderr
    rayjob = list(yaml.safe_load_all(result.stdout))[1]
    assert rayjob["spec"]["activeDeadlineSeconds"] == 43200 and "preRunningDeadlineSeconds" not in rayjob["spec"]
    assert rayjob["metadata"]["labels"][k8s.KUEUE_QUEUE_LABEL] == "gpu" and rayjob["spec"]["suspend"] is True
    bad = CliRunner().invoke(app, [*base, "--start-deadline", "soon"])
    assert bad.exit_code == 2 and bad.stdout == "" and "--start-deadline: got 'soon'" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------------- Kueue
def test_a_queued_rayjob_is_suspended_labelled_and_of_fixed_size() -> None:
    """Kueue admits a suspended RayJob whose queue-name label names a LocalQueue; its quota is the worker
    group's replicas, and its webhook refuses a RayJob with the autoscaler on."""
    config_map, rayjob = render(GPU_SPEC_TEXT, cluster="gke-spot-gpu", queue="team-gpus")
    assert rayjob["metadata"]["labels"][k8s.KUEUE_QUEUE_LABEL] == "team-gpus"
    assert k8s.KUEUE_QUEUE_LABEL not in config_map["metadata"]["labels"]
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert rayjob["spec"]["suspend"] is True and cluster["enableInTreeAutoscaling"] is False
    assert "autoscalerOptions" not in cluster
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    assert "clusterSelector" not in rayjob["spec"] and rayjob["spec"]["shutdownAfterJobFinishes"] is True
    validate(rayjob)


def test_without_a_queue_there_is_no_kueue_field() -> None:
    for where, doc in all_docs():
        assert k8s.KUEUE_QUEUE_LABEL not in doc["metadata"]["labels"], where
        if doc["kind"] == "RayJob":
            assert "suspend" not in doc["spec"] and doc["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"], where


@pytest.mark.parametrize("queue", ["Team_A", "", "a" * 64, "gpu queue"])
def test_a_bad_queue_name_is_refused(queue: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"queue: got {queue!r}")):
        render(queue=queue)


# ------------------------------------------------------------------------------------------------- the head
def test_no_head_is_evicted_by_the_cluster_autoscaler() -> None:
    for where, doc in every_doc():
        for spec in cluster_specs(doc):
            annotations = spec["headGroupSpec"]["template"]["metadata"]["annotations"]
            assert annotations[k8s.SAFE_TO_EVICT] == "false", where


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_interactive_clusters_head_has_a_disruption_budget(name: str) -> None:
    docs = objects(name)
    budget, cluster = only(docs, "PodDisruptionBudget"), only(docs, "RayCluster")
    # KubeRay labels a RayCluster's pods ray.io/cluster=<its name> and ray.io/node-type=head|worker
    assert budget["spec"]["selector"]["matchLabels"] == {
        "ray.io/cluster": cluster["metadata"]["name"],
        "ray.io/node-type": "head",
    }
    assert budget["spec"]["maxUnavailable"] == 0 and budget["metadata"]["namespace"] == cluster["metadata"]["namespace"]


# ------------------------------------------------------------------------------------------------- the image
DOCKERFILE = K8S / "Dockerfile"


def constraints() -> dict[str, str]:
    pins = {}
    for line in (K8S / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert re.fullmatch(r"[a-z0-9-]+", name) and re.fullmatch(r"[0-9][0-9a-z.]*", version), line
            pins[name] = version
    return pins


def test_the_image_carries_cuda_once() -> None:
    """The CUDA libraries come from tensorflow[and-cuda]'s wheels only: the base image has none."""
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base)  # a patch version, not a moving 3.11 tag
    assert "cuda" not in base.lower() and "gpu" not in base.lower()
    assert re.findall(r"^FROM (\S+)$", text, re.M) == ["${PYTHON_IMAGE}"]
    assert 'ARG TENSORFLOW="tensorflow[and-cuda]"' in text and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text


def test_every_version_the_image_installs_is_pinned_to_what_was_tested() -> None:
    pins = constraints()
    for name in ("tensorflow", "tf-keras", "keras", "ray", "numpy", "pydantic", "gcsfs", "fsspec"):
        assert pins[name] == importlib.metadata.version(name), name
    assert pins["ray"] == k8s.RAY_VERSION
    spec = importlib.util.spec_from_file_location("k8s_constraints", K8S / "constraints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cuda = module.cuda_pins()
    assert len(cuda) >= 10 and all(name.startswith("nvidia-") for name in cuda)
    assert {name: pins[name] for name in cuda} == cuda  # the CUDA wheels at TensorFlow's stated lower bounds
    for line in DOCKERFILE.read_text().splitlines():
        if "pip install" in line:
            assert "--constraint /tmp/constraints.txt" in line, line


def test_the_build_context_is_only_what_the_dockerfile_copies() -> None:
    rules = [
        line
        for line in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"  # everything out, then each copied path back in
    included = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            sources = [part for part in line.split()[1:-1] if not part.startswith("--")]
            copied |= {source.rstrip("/") for source in sources}
    assert copied == included
    assert "**/__pycache__" in rules


def test_the_emulator_image_is_pinned_to_a_patch_version() -> None:
    deployment = only(objects("cpu-test"), "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image)
    assert re.search(r"gcp-storage-emulator==\S+", deployment["spec"]["template"]["spec"]["containers"][0]["args"][0])


def test_images_may_be_given_by_digest() -> None:
    digest = "registry.example/orchestrator:0.1.0@sha256:" + "ab" * 32
    _, rayjob = render(image=digest)
    assert {template["spec"]["containers"][0]["image"] for template in pod_templates(rayjob)} == {digest}


def test_the_worked_example_spreads_spot_capacity_over_zones() -> None:
    """Spot capacity comes and goes by zone: the GKE example makes a regional cluster with its spot GPU pool in
    several zones, and shows a ComputeClass that falls back from spot to on-demand."""
    readme = (K8S / "README.md").read_text()
    locations = re.findall(r"--node-locations ([a-z0-9,-]+)", readme)
    assert locations and all(len(zones.split(",")) >= 2 for zones in locations)
    assert "kind: ComputeClass" in readme and "spot: true" in readme


def test_a_broken_disruption_budget_is_refused() -> None:
    budget: dict[str, Any] = only(objects("gke-spot-gpu"), "PodDisruptionBudget")
    budget["spec"]["maxUnavailble"] = 0
    with pytest.raises(kubernetes_validate.ValidationError, match="maxUnavailble"):
        validate(budget)
