"""The KubeRay manifests in k8s/ and orchestrator.k8s, validated offline, object by object.

What `kubectl apply -k k8s/overlays/<overlay>` would send is built here by a small kustomize (``build``): it
reads ``resources``, ``namespace`` and ``patches`` (JSON 6902 with add/remove/replace/test; strategic merge of
maps only, where kustomize's merge is RFC 7386's) and refuses any other kustomization feature, so it cannot
drift silently from the real tool. Every object it yields is validated:

- RayCluster and RayJob against the KubeRay CRDs' OpenAPI schemas (the folder in $KUBERAY_CRD_SCHEMAS), closed the way
  `kubectl apply`'s strict field validation treats a structural schema (an unknown field is an error unless
  ``x-kubernetes-preserve-unknown-fields``), with ``x-kubernetes-int-or-string``, ``nullable``,
  ``x-kubernetes-list-type`` (map keys and set items unique), int32/int64 formats and KubeRay's name rules.
  CEL rules (``x-kubernetes-validations``) are not evaluated: a test checks the manifests set none of the
  fields that carry one;
- core objects (ConfigMap, ServiceAccount, Deployment, Service, PodDisruptionBudget) and every pod template in
  the Ray objects with kubernetes-validate (the Kubernetes OpenAPI schemas it ships, strict).

Then what the overlays claim (GPUs and spot only in gke-spot-gpu), what Ray on Kubernetes needs (SIGTERM reaches
`ray start`, the token only as a Secret reference, one Ray version), and that each overlay's RayJob and
ConfigMap are exactly what ``render_rayjob`` writes for its spec.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrator import k8s
from orchestrator.errors import SpecError, UsageError
from orchestrator.spec_loader import load_spec

Manifest = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
# KubeRay's CRDs (ray.io_rayclusters.yaml, ray.io_rayjobs.yaml) are not part of this repository: the tests that
# validate against them take the folder from this variable (.ci/run sets it) and are skipped without it.
SCHEMAS_ENV = "KUBERAY_CRD_SCHEMAS"
SCHEMAS = Path(os.environ.get(SCHEMAS_ENV, "/nonexistent"))
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
KUBERAY_NAME_LIMITS = {"RayCluster": 53, "RayJob": 47}  # KubeRay's ValidateRay{Cluster,Job}Metadata
K8S_VERSION = "1.33"  # the oldest minor a GKE release channel still offers
OVERLAYS = {"gke-spot-gpu": "gke-spot-gpu", "cpu-test": "cpu-test"}  # overlay -> render_rayjob cluster profile
DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# What every attempt of a RayJob runs (issue #7): the same command, which resumes a job the store already has.
ENTRYPOINT = "orchestrator run /etc/orchestrator/spec.yaml --address auto --store $(ORCHESTRATOR_STORE) --or-resume"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


# ------------------------------------------------------------------------------------------- a small kustomize
class KustomizeError(Exception):
    """A kustomization this builder cannot apply exactly as kustomize would."""


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "patches"}
TARGET_KEYS = {"group", "version", "kind", "name"}


def build(folder: Path) -> list[Manifest]:
    """The objects `kustomize build folder` makes: resources, then patches, then the namespace (kustomize's order)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{folder}: kustomization keys this test cannot apply faithfully: {sorted(unknown)}")
    docs: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        docs += build(path) if path.is_dir() else [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for entry in kustomization.get("patches", []):
        _apply_patch(docs, folder, entry)
    if "namespace" in kustomization:
        for doc in docs:
            doc["metadata"]["namespace"] = kustomization["namespace"]
    ids = [(doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) for doc in docs]
    if len(set(ids)) != len(ids):
        raise KustomizeError(f"{folder}: two resources with one id: {sorted(ids)}")
    return docs


def _apply_patch(docs: list[Manifest], folder: Path, entry: Manifest) -> None:
    if set(entry) - {"path", "target"}:
        raise KustomizeError(f"patch entry {entry}: only path and target are supported")
    body = yaml.safe_load((folder / entry["path"]).read_text())
    if isinstance(body, list):
        if "target" not in entry:
            raise KustomizeError(f"{entry['path']}: a JSON 6902 patch needs a target")
        for doc in _select(docs, entry["target"], entry["path"]):
            apply_json6902(doc, body)
        return
    if _has_list(body):
        raise KustomizeError(f"{entry['path']}: a strategic-merge patch with a list (kustomize merges some by key)")
    target = entry.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
    for doc in _select(docs, target, entry["path"]):
        merge_patch(doc, body)


def _select(docs: list[Manifest], target: Manifest, source: str) -> list[Manifest]:
    if set(target) - TARGET_KEYS:
        raise KustomizeError(f"{source}: target keys this test cannot apply: {sorted(set(target) - TARGET_KEYS)}")
    matched = []
    for doc in docs:
        group, _, version = doc["apiVersion"].rpartition("/")
        wanted = {"group": group, "version": version, "kind": doc["kind"], "name": doc["metadata"]["name"]}
        if all(wanted[key] == value for key, value in target.items()):
            matched.append(doc)
    if not matched:
        raise KustomizeError(f"{source}: the patch's target {target} matches no resource")
    return matched


def _has_list(node: Any) -> bool:
    if isinstance(node, list):
        return True
    return isinstance(node, dict) and any(_has_list(value) for value in node.values())


def merge_patch(target: Manifest, patch: Manifest) -> None:
    """RFC 7386: maps merge recursively, null deletes a key (what kustomize does to maps in a strategic merge)."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def apply_json6902(doc: Manifest, operations: list[Manifest]) -> None:
    """RFC 6902's add, remove, replace and test, on JSON pointers (``~1`` is '/', ``~0`` is '~', ``-`` appends)."""
    for operation in operations:
        op, path = operation["op"], operation["path"]
        tokens = [token.replace("~1", "/").replace("~0", "~") for token in path.split("/")[1:]]
        parent = doc
        for token in tokens[:-1]:
            parent = _child(parent, token, path)
        last = tokens[-1]
        if op == "add":
            value = copy.deepcopy(operation["value"])
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else _index(parent, last, path, extra=1), value)
            else:
                parent[last] = value
        elif op in ("remove", "replace", "test"):
            current = _child(parent, last, path)
            if op == "test" and current != operation["value"]:
                raise KustomizeError(f"test {path}: got {current!r}, expected {operation['value']!r}")
            if op == "remove":
                del parent[_index(parent, last, path) if isinstance(parent, list) else last]
            if op == "replace":
                parent[_index(parent, last, path) if isinstance(parent, list) else last] = copy.deepcopy(
                    operation["value"]
                )
        else:
            raise KustomizeError(f"{path}: op {op!r} is not supported here")


def _child(node: Any, token: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, token, path)]
    if not isinstance(node, dict) or token not in node:
        raise KustomizeError(f"{path}: {token!r} does not exist")
    return node[token]


def _index(node: list[Any], token: str, path: str, extra: int = 0) -> int:
    if not token.isdigit() or int(token) >= len(node) + extra:
        raise KustomizeError(f"{path}: {token!r} is not an index of a list of {len(node)}")
    return int(token)


@functools.cache
def overlay(name: str) -> tuple[Manifest, ...]:
    return tuple(build(K8S / "overlays" / name))


def objects(name: str) -> list[Manifest]:
    """A fresh copy of what the overlay makes (tests may change it)."""
    return copy.deepcopy(list(overlay(name)))


def only(docs: list[Manifest], kind: str) -> Manifest:
    matches = [doc for doc in docs if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


# ------------------------------------------------------------------------------------- schema validation
def closed(schema: Manifest) -> Manifest:
    """A CRD's structural schema as JSON Schema, with unknown fields refused as `kubectl apply` does."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {key: closed(value) for key, value in out["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = closed(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [closed(option) for option in out[key]]
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = out.get("x-kubernetes-preserve-unknown-fields")
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def _list_type(validator: Any, list_type: str, instance: Any, schema: Manifest) -> Iterator[jsonschema.ValidationError]:
    """``x-kubernetes-list-type``: a map's items are unique by their keys (defaults applied), a set's items unique."""
    if not isinstance(instance, list):
        return
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        fields = schema.get("items", {}).get("properties", {})
        idents = [tuple(item.get(key, fields.get(key, {}).get("default")) for key in keys) for item in instance]
    elif list_type == "set":
        idents = [yaml.safe_dump(item) for item in instance]
    else:
        return
    duplicates = sorted({str(ident) for ident in idents if idents.count(ident) > 1})
    if duplicates:
        yield jsonschema.ValidationError(f"duplicate entries {duplicates} in a list of type {list_type}")


FORMATS = jsonschema.FormatChecker(formats=())
FORMATS.checks("int32")(lambda value: not isinstance(value, int) or -(2**31) <= value < 2**31)
FORMATS.checks("int64")(lambda value: not isinstance(value, int) or -(2**63) <= value < 2**63)
FORMATS.checks("int-or-string")(lambda value: isinstance(value, int | str))
CRDValidator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"x-kubernetes-list-type": _list_type})


def object_meta(kind: str) -> Manifest:
    """The top-level metadata, which a CRD leaves to the API server: ObjectMeta's fields we use, KubeRay's names."""
    label_map = {
        "type": "object",
        "propertyNames": {"pattern": LABEL_KEY, "maxLength": 316},
        "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
    }
    return {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": DNS_1035, "maxLength": KUBERAY_NAME_LIMITS[kind]},
            "namespace": {"type": "string", "pattern": DNS_1123_LABEL, "maxLength": 63},
            "labels": label_map,
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }


@functools.cache
def crd_schema(kind: str) -> Manifest:
    path = SCHEMAS / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(
            f"KubeRay's CRD schema {CRD_FILES[kind]} not found (${SCHEMAS_ENV}={os.environ.get(SCHEMAS_ENV, '')!r}): "
            f"set {SCHEMAS_ENV} to a folder holding KubeRay's crd/bases/{CRD_FILES[kind]} (from the kuberay "
            "repository or its Helm chart, v1.6 or later: preRunningDeadlineSeconds) to validate the manifests "
            "against it"
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(path.read_text(), Loader=loader)  # a safe loader: libyaml's when there is one
    version = next(version for version in crd["spec"]["versions"] if version["name"] == "v1")
    schema = closed(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = object_meta(kind)
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return schema


def validate(doc: Manifest) -> None:
    """Raise (jsonschema or kubernetes_validate ValidationError) unless the API server would take ``doc`` as it is."""
    if doc["apiVersion"] == "ray.io/v1":
        errors = sorted(CRDValidator(crd_schema(doc["kind"]), format_checker=FORMATS).iter_errors(doc), key=str)
        if errors:
            where = "/".join(str(part) for part in errors[0].absolute_path)
            raise jsonschema.ValidationError(
                f"{doc['kind']} {doc['metadata'].get('name')}: {where}: {errors[0].message}"
            )
        for template in pod_templates(doc):
            pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def cluster_specs(doc: Manifest) -> list[Manifest]:
    if doc["kind"] == "RayCluster":
        return [doc["spec"]]
    if doc["kind"] == "RayJob":
        return [doc["spec"]["rayClusterSpec"]]
    return []


def pod_templates(doc: Manifest) -> list[Manifest]:
    templates = []
    for spec in cluster_specs(doc):
        templates.append(spec["headGroupSpec"]["template"])
        templates += [group["template"] for group in spec["workerGroupSpecs"]]
    if doc["kind"] == "RayJob":
        templates.append(doc["spec"]["submitterPodTemplate"])
    return templates


def ray_containers(doc: Manifest) -> list[Manifest]:
    """The Ray container (index 0, as KubeRay takes it) of the head and of every worker group."""
    containers = []
    for spec in cluster_specs(doc):
        containers.append(spec["headGroupSpec"]["template"]["spec"]["containers"][0])
        containers += [group["template"]["spec"]["containers"][0] for group in spec["workerGroupSpecs"]]
    return containers


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def cel_fields(schema: Manifest, instance: Any, path: str = "") -> list[str]:
    """Paths in ``instance`` whose schema carries CEL rules (``x-kubernetes-validations``)."""
    found = [path or "/"] if "x-kubernetes-validations" in schema else []
    if isinstance(instance, dict):
        for key, value in instance.items():
            child = schema.get("properties", {}).get(key) or schema.get("additionalProperties")
            if isinstance(child, dict):
                found += cel_fields(child, value, f"{path}/{key}")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(instance):
            found += cel_fields(schema["items"], item, f"{path}/{index}")
    return found


def differences(got: Any, expected: Any, path: str = "") -> list[str]:
    """Where two manifests differ, one line per leaf: `/path: got != expected`."""
    if isinstance(got, dict) and isinstance(expected, dict):
        return [
            line
            for key in sorted(set(got) | set(expected), key=str)
            for line in differences(got.get(key, "<absent>"), expected.get(key, "<absent>"), f"{path}/{key}")
        ]
    if isinstance(got, list) and isinstance(expected, list) and len(got) == len(expected):
        return [
            line
            for index, pair in enumerate(zip(got, expected, strict=True))
            for line in differences(*pair, f"{path}/{index}")
        ]
    return [] if got == expected else [f"{path}: {got!r} != {expected!r}"]


def spec_text(docs: list[Manifest]) -> str:
    text: str = only(docs, "ConfigMap")["data"][k8s.SPEC_FILE]
    return text


# ------------------------------------------------------------------------------------------ the manifests
@pytest.mark.parametrize("name", OVERLAYS)
def test_every_object_each_overlay_makes_is_valid(name: str) -> None:
    docs = objects(name)
    kinds = sorted(doc["kind"] for doc in docs)
    expected = ["ConfigMap", "PodDisruptionBudget", "RayCluster", "RayJob", "ServiceAccount"]
    assert kinds == (sorted([*expected, "Deployment", "Service"]) if name == "cpu-test" else expected)
    for doc in docs:
        validate(doc)


def test_base_objects_are_valid_too() -> None:
    for doc in build(K8S / "base"):
        validate(doc)


def test_gke_spot_gpu_puts_gpu_workers_on_spot_and_the_head_on_demand() -> None:
    docs = objects("gke-spot-gpu")
    spot = {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    for doc in (only(docs, "RayCluster"), only(docs, "RayJob")):
        (cluster,) = cluster_specs(doc)
        head = cluster["headGroupSpec"]["template"]["spec"]
        (term,) = head["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ]
        assert term["matchExpressions"] == [
            {"key": "cloud.google.com/gke-spot", "operator": "NotIn", "values": ["true"]},
            {"key": "cloud.google.com/gke-accelerator", "operator": "DoesNotExist"},
        ]
        assert "tolerations" not in head and "nodeSelector" not in head
        (group,) = cluster["workerGroupSpecs"]
        worker = group["template"]["spec"]
        assert worker["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
        assert spot in worker["tolerations"] and gpu in worker["tolerations"]
        assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert group["maxReplicas"] >= 2 and cluster["enableInTreeAutoscaling"] is True
        assert worker["terminationGracePeriodSeconds"] >= 30
    annotations = only(docs, "ServiceAccount")["metadata"]["annotations"]
    assert re.fullmatch(
        r"[a-z][a-z0-9-]+@[a-z][a-z0-9-]+\.iam\.gserviceaccount\.com", annotations["iam.gke.io/gcp-service-account"]
    )
    assert {doc["metadata"]["namespace"] for doc in docs} == {"orchestrator"}


def test_cpu_test_has_no_gpu_no_spot_and_its_own_store() -> None:
    docs = objects("cpu-test")
    text = yaml.safe_dump_all(docs)
    assert "nvidia.com/gpu" not in text and "gke-spot" not in text and "iam.gke.io" not in text
    for doc in docs:
        for template in pod_templates(doc):
            assert not {"nodeSelector", "tolerations", "affinity"} & set(template["spec"])
    service = only(docs, "Service")
    emulator = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    for doc in (only(docs, "RayCluster"), only(docs, "RayJob")):
        for container in ray_containers(doc):
            assert env_of(container)["STORAGE_EMULATOR_HOST"]["value"] == emulator
            assert env_of(container)["ORCHESTRATOR_STORE"]["value"].startswith("gs://orchestrator/")
    assert (
        "--default-bucket orchestrator"
        in only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"][0]
    )


@pytest.mark.parametrize("name", OVERLAYS)
def test_rayjob_and_configmap_are_what_render_rayjob_writes(name: str) -> None:
    docs = objects(name)
    rayjob = only(docs, "RayJob")
    head = ray_containers(rayjob)[0]
    rendered = k8s.render_rayjob(
        spec_text(docs),
        rayjob["metadata"]["labels"][k8s.JOB_LABEL],
        store_url=env_of(head)[k8s.STORE_ENV]["value"],
        image=head["image"],
        namespace=rayjob["metadata"]["namespace"],
        cluster=OVERLAYS[name],
    )
    wrong = differences([only(docs, "ConfigMap"), rayjob], rendered)
    assert not wrong, "the overlay (left) and render_rayjob (right) differ:\n" + "\n".join(wrong[:20])


@pytest.mark.parametrize("name", OVERLAYS)
def test_interactive_cluster_has_the_pods_of_the_job_cluster(name: str) -> None:
    docs = objects(name)
    interactive = only(docs, "RayCluster")["spec"]
    job = only(docs, "RayJob")["spec"]["rayClusterSpec"]
    head = job["headGroupSpec"]["template"]["spec"]
    assert head.pop("volumes") == [{"name": "job-spec", "configMap": {"name": spec_config_map(docs)}}]
    assert head["containers"][0].pop("volumeMounts") == [
        {"name": "job-spec", "mountPath": k8s.SPEC_DIR, "readOnly": True}
    ]
    assert interactive["workerGroupSpecs"][0].pop("maxReplicas") >= job["workerGroupSpecs"][0].pop("maxReplicas")
    # the interactive cluster idles at its head; a job's cluster starts with its workers (the start deadline)
    assert [interactive["workerGroupSpecs"][0].pop(key) for key in ("replicas", "minReplicas")] == [0, 0]
    assert job["workerGroupSpecs"][0].pop("replicas") == job["workerGroupSpecs"][0].pop("minReplicas") > 0
    wrong = differences(interactive, job)
    assert not wrong, "the RayCluster (left) and the RayJob's cluster (right) differ:\n" + "\n".join(wrong[:20])


def spec_config_map(docs: list[Manifest]) -> str:
    name: str = only(docs, "ConfigMap")["metadata"]["name"]
    return name


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_example_spec_is_valid_and_fits_its_worker_group(name: str, tmp_path: Path) -> None:
    docs = objects(name)
    path = tmp_path / k8s.SPEC_FILE
    path.write_text(spec_text(docs))
    spec = load_spec(path)
    rayjob = only(docs, "RayJob")
    assert rayjob["metadata"]["labels"][k8s.JOB_LABEL] == spec.name
    assert rayjob["metadata"]["name"] == k8s.rayjob_name(spec.name)
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert group["maxReplicas"] == spec.scaling.workers
    assert int(limits["cpu"]) >= math.ceil(spec.scaling.cpus_per_worker)
    assert int(limits.get("nvidia.com/gpu", 0)) == spec.scaling.gpus_per_worker


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_entrypoint_reads_the_spec_the_head_mounts(name: str) -> None:
    docs = objects(name)
    rayjob = only(docs, "RayJob")
    spec_path = Path(rayjob["spec"]["entrypoint"].split()[2])
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (volume,) = [volume for volume in head["volumes"] if "configMap" in volume]
    (mount,) = [mount for mount in head["containers"][0]["volumeMounts"] if mount["name"] == volume["name"]]
    assert volume["configMap"]["name"] == spec_config_map(docs)
    assert spec_path.parent == Path(mount["mountPath"]) and spec_path.name in only(docs, "ConfigMap")["data"]


def all_docs() -> Iterator[tuple[str, Manifest]]:
    for name in OVERLAYS:
        for doc in objects(name):
            yield name, doc
    for profile in k8s.CLUSTER_PROFILES.values():
        text = CPU_SPEC if not profile.gpus else GPU_SPEC_TEXT
        for doc in k8s.render_rayjob(text, "render", store_url="s3://bucket/x", image="i:1", cluster=profile.name):
            yield f"render {profile.name}", doc


def test_sigterm_reaches_ray_and_the_drain_fits_the_grace_period() -> None:
    """KubeRay's `ray start --block` must get the pod's SIGTERM (Ray 2.60 then drains the node): no command or
    args over KubeRay's, no preStop hook (a `ray stop` there kills Ray before it drains), no shared PID
    namespace; the drain window ends before the grace period does, so Ray's own teardown still fits."""
    for where, doc in all_docs():
        for template in pod_templates(doc):
            pod = template["spec"]
            assert not pod.get("shareProcessNamespace"), where
            assert pod.get("terminationGracePeriodSeconds", 30) >= 30, where
            for container in pod["containers"]:
                assert "preStop" not in container.get("lifecycle", {}), where
        for container in ray_containers(doc):
            assert "command" not in container and "args" not in container, where
            drain = float(env_of(container)["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"]["value"])
            assert 0 < drain <= k8s.TERMINATION_GRACE_S - 10, where
        for spec in cluster_specs(doc):
            pods = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
            assert {group["template"]["spec"]["terminationGracePeriodSeconds"] for group in pods} == {
                k8s.TERMINATION_GRACE_S
            }, where


def test_no_secret_value_in_any_manifest() -> None:
    """Ray's token only as a reference to the Secret that authOptions names; no keys; nothing that looks like one."""
    for where, doc in all_docs():
        assert doc["kind"] != "Secret", where
        assert not re.search(r"\b[0-9a-f]{32,}\b", yaml.safe_dump(doc)), where
        for spec in cluster_specs(doc):
            assert spec["authOptions"] == {"mode": "token", "secretName": k8s.AUTH_SECRET}, where
        for template in pod_templates(doc):
            for container in template["spec"]["containers"]:
                env = env_of(container)
                assert not {"GOOGLE_APPLICATION_CREDENTIALS", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"} & set(env)
                assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}, where
                reference = {"secretKeyRef": {"name": k8s.AUTH_SECRET, "key": k8s.AUTH_SECRET_KEY}}
                assert env["RAY_AUTH_TOKEN"] == {"name": "RAY_AUTH_TOKEN", "valueFrom": reference}, where
        if doc["kind"] == "ServiceAccount":
            assert "secrets" not in doc and "imagePullSecrets" not in doc


def test_ray_pods_have_what_training_needs() -> None:
    for where, doc in all_docs():
        for container in ray_containers(doc):
            env = env_of(container)
            assert env["TF_USE_LEGACY_KERAS"]["value"] == "1", where
            assert k8s.check_store_url(env[k8s.STORE_ENV]["value"]), where
        for spec in cluster_specs(doc):
            head = spec["headGroupSpec"]
            assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0", where
            assert head["template"]["spec"]["serviceAccountName"] == k8s.SERVICE_ACCOUNT, where
            assert all(
                group["template"]["spec"]["serviceAccountName"] == k8s.SERVICE_ACCOUNT
                for group in spec["workerGroupSpecs"]
            )
            for group in spec["workerGroupSpecs"]:  # an interactive cluster idles at its head
                assert group["minReplicas"] == (0 if doc["kind"] == "RayCluster" else group["replicas"]), where
    for name in OVERLAYS:
        assert only(objects(name), "ServiceAccount")["metadata"]["name"] == k8s.SERVICE_ACCOUNT


def test_entrypoint_resumes_and_its_variables_come_from_the_submitter() -> None:
    """KubeRay runs the entrypoint in the submitter's `bash -c` args: the kubelet expands $(VAR) there from that
    container's env, and an undefined one would reach bash as a command substitution."""
    for where, doc in all_docs():
        if doc["kind"] != "RayJob":
            continue
        entrypoint = doc["spec"]["entrypoint"]
        assert entrypoint == ENTRYPOINT if where in OVERLAYS else entrypoint.startswith(ENTRYPOINT), where
        (submitter,) = doc["spec"]["submitterPodTemplate"]["spec"]["containers"]
        assert "command" not in submitter and "args" not in submitter, where  # KubeRay fills them in
        env = env_of(submitter)
        for variable in re.findall(r"\$\((\w+)\)", entrypoint):
            assert "value" in env.get(variable, {}), f"{where}: $({variable}) is not set in the submitter"
        assert env[k8s.STORE_ENV] == env_of(ray_containers(doc)[0])[k8s.STORE_ENV], where
        spec = doc["spec"]
        assert spec["backoffLimit"] >= 1 and spec["shutdownAfterJobFinishes"] is True, where
        assert spec["ttlSecondsAfterFinished"] > 0 and "clusterSelector" not in spec, where


def test_one_ray_version_in_the_manifests_the_image_and_the_package() -> None:
    dockerfile = (K8S / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-", dockerfile, re.M)  # py311, as the image tags say
    pins = dict(line.split("==") for line in (K8S / "constraints.txt").read_text().splitlines() if "==" in line)
    assert pins["ray"] == k8s.RAY_VERSION and pins["tensorflow"].startswith("2.21.") and pins["tf-keras"] == "2.21.0"
    minor = k8s.RAY_VERSION.rsplit(".", 1)[0]  # the package pins ray to one minor version (pyproject.toml)
    assert importlib.metadata.version("ray").startswith(f"{minor}.")
    for where, doc in all_docs():
        for spec in cluster_specs(doc):
            assert spec["rayVersion"] == k8s.RAY_VERSION, where
        images = {template["spec"]["containers"][0]["image"] for template in pod_templates(doc)}
        assert len(images) <= 1, f"{where}: {images}"
        if where in OVERLAYS:
            assert all(f"-ray{k8s.RAY_VERSION}-py311-" in image for image in images), where


def test_manifests_set_no_field_that_has_a_cel_rule() -> None:
    """The CRDs' CEL rules (managedBy, deletionStrategy, GCS fault tolerance) are not evaluated here."""
    for where, doc in all_docs():
        if doc["apiVersion"] == "ray.io/v1":
            assert cel_fields(crd_schema(doc["kind"]), doc) == [], where


# ------------------------------------------------------------------------- the checks can fail
def broken_rayjob(change: str) -> Manifest:
    rayjob = only(objects("gke-spot-gpu"), "RayJob")
    worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    pod = worker["template"]["spec"]
    if change == "unknown field":
        pod["nodeSelecter"] = pod.pop("nodeSelector")
    elif change == "string for an integer":
        worker["maxReplicas"] = "2"
    elif change == "integer for a string":
        rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    elif change == "two env entries of one name":
        pod["containers"][0]["env"].append({"name": "TF_USE_LEGACY_KERAS", "value": "0"})
    elif change == "bad quantity":
        pod["containers"][0]["resources"]["limits"]["memory"] = "16 GB"
    elif change == "name too long for KubeRay":
        rayjob["metadata"]["name"] = "a" * 48
    elif change == "int32 overflow":
        rayjob["spec"]["backoffLimit"] = 2**31
    elif change == "unknown field in a pod template":
        pod["containers"][0]["resources"]["limit"] = {"cpu": "1"}
    elif change == "a pod field newer than the cluster":  # in the CRD's (newer) pod schema, not in Kubernetes 1.33's
        pod["hostnameOverride"] = "worker"
    return rayjob


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("unknown field", "'nodeSelecter' was unexpected"),
        ("string for an integer", "maxReplicas: '2' is not of type 'integer'"),
        ("integer for a string", "num-cpus: 0 is not of type 'string'"),
        ("two env entries of one name", "duplicate entries"),
        ("bad quantity", "memory: '16 GB' does not match"),
        ("name too long for KubeRay", "metadata/name: 'aaaa"),
        ("int32 overflow", "is not a 'int32'"),
        ("unknown field in a pod template", "'limit' was unexpected"),
    ],
)
def test_a_broken_ray_manifest_is_refused_by_the_crd_schema(change: str, reason: str) -> None:
    with pytest.raises(jsonschema.ValidationError, match=re.escape(reason)):
        validate(broken_rayjob(change))


def test_a_pod_field_the_crd_takes_but_the_cluster_does_not_know_is_refused_by_the_pod_template_check() -> None:
    """KubeRay's CRD embeds a newer Kubernetes' pod schema than the oldest cluster we target: only the second
    pass (kubernetes-validate over the Ray pod templates, at K8S_VERSION) can refuse such a field."""
    rayjob = broken_rayjob("a pod field newer than the cluster")
    assert list(CRDValidator(crd_schema("RayJob"), format_checker=FORMATS).iter_errors(rayjob)) == []
    with pytest.raises(kubernetes_validate.ValidationError, match="hostnameOverride"):
        validate(rayjob)


def test_a_broken_core_object_is_refused() -> None:
    config_map = only(objects("gke-spot-gpu"), "ConfigMap")
    config_map["data"]["epochs"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(config_map)
    account = only(objects("gke-spot-gpu"), "ServiceAccount")
    account["automountToken"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(account)


def write_kustomization(folder: Path, patch: Any, target: Manifest | None = None, **extra: Any) -> Path:
    folder.mkdir()
    (folder / "patch.yaml").write_text(yaml.safe_dump(patch))
    entry: Manifest = {"path": "patch.yaml", **({"target": target} if target else {})}
    kustomization = {"resources": [str(K8S / "base")], "patches": [entry], **extra}
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return folder


TARGET = {"group": "ray.io", "version": "v1", "kind": "RayJob", "name": "example"}
SPOT_PATH = "/spec/rayClusterSpec/workerGroupSpecs/0/template/spec/nodeSelector"


@pytest.mark.parametrize(
    ("patch", "target", "extra", "problem"),
    [
        ([{"op": "test", "path": f"{SPOT_PATH}/cloud.google.com~1gke-spot", "value": "false"}], TARGET, {}, "test"),
        ([{"op": "remove", "path": f"{SPOT_PATH}/missing"}], TARGET, {}, "does not exist"),
        ([{"op": "replace", "path": "/spec/rayClusterSpec/workerGroupSpecs/3", "value": {}}], TARGET, {}, "index"),
        ([{"op": "move", "from": "/spec", "path": "/x"}], TARGET, {}, "not supported"),
        ({"kind": "RayJob", "metadata": {"name": "example"}, "spec": {"x": [1]}}, None, {}, "with a list"),
        ({"kind": "RayJob", "metadata": {"name": "other"}}, None, {}, "matches no resource"),
        ([], TARGET, {"images": [{"name": "x", "newTag": "y"}]}, "cannot apply faithfully"),
    ],
)
def test_the_kustomize_builder_refuses_what_it_cannot_apply(
    tmp_path: Path, patch: Any, target: Manifest | None, extra: Manifest, problem: str
) -> None:
    with pytest.raises(KustomizeError, match=problem):
        build(write_kustomization(tmp_path / "overlay", patch, target, **extra))


def test_the_kustomize_builder_applies_patches_like_kustomize(tmp_path: Path) -> None:
    patch = [
        {"op": "add", "path": f"{SPOT_PATH}/cloud.google.com~1gke-accelerator", "value": "nvidia-l4"},
        {"op": "test", "path": f"{SPOT_PATH}/cloud.google.com~1gke-spot", "value": "true"},
        {"op": "add", "path": "/spec/rayClusterSpec/workerGroupSpecs/0/template/spec/tolerations/0", "value": {"k": 1}},
        {"op": "remove", "path": "/spec/rayClusterSpec/workerGroupSpecs/0/template/spec/tolerations/2"},
    ]
    docs = build(write_kustomization(tmp_path / "overlay", patch, TARGET, namespace="ns"))
    pod = only(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-spot": "true", "cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert [toleration.get("key") for toleration in pod["tolerations"]] == [None, "cloud.google.com/gke-spot"]
    assert {doc["metadata"]["namespace"] for doc in docs} == {"ns"}


# ----------------------------------------------------------------------------------------- render_rayjob
CPU_SPEC = """\
# a comment, kept
name: quickstart
model: {recipe: small_cnn}
data: {kind: synthetic}
optimizer: {name: adam, learning_rate: 0.001}
epochs: 2
batch_size: 64
scaling: {workers: 2, cpus_per_worker: 1}
"""
GPU_SPEC_TEXT = CPU_SPEC.replace("cpus_per_worker: 1}", "cpus_per_worker: 4, gpus_per_worker: 1}")


def render(text: str = CPU_SPEC, job: str = "quickstart", **options: Any) -> list[Manifest]:
    arguments: Manifest = {"store_url": "gs://bucket/store", "image": "orchestrator:0.1.0", "cluster": "cpu-test"}
    return k8s.render_rayjob(text, job, **{**arguments, **options})


@pytest.mark.parametrize(
    "store", ["/tmp/store", "store", "~/.orchestrator/store", "file:///tmp/store", "memory://store", "C:\\store"]
)
def test_a_local_store_is_refused(store: str) -> None:
    with pytest.raises(UsageError) as raised:
        render(store_url=store)
    message = raised.value.message
    assert repr(store) in message and "gs://" in message and "s3://" in message and "shared" in message
    assert raised.value.exit_code == 2


@pytest.mark.parametrize("store", ["gs://bucket/x;rm -rf /", "gs://bucket/$(id)", "gs://Bucket/x", "az://bucket/x"])
def test_a_store_that_is_no_plain_bucket_url_is_refused(store: str) -> None:
    """The URL ends up in a shell command line (the submitter's `bash -c`), so only plain characters pass."""
    with pytest.raises(UsageError, match="accepted: gs://bucket/path or s3://bucket/path"):
        render(store_url=store)


@pytest.mark.parametrize("store", ["gs://bucket/store", "s3://my.bucket-1/a/b_c", "gs://bucket"])
def test_a_bucket_store_reaches_every_pod(store: str) -> None:
    _, rayjob = render(store_url=store)
    containers = [*ray_containers(rayjob), rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"][0]]
    assert [env_of(container)[k8s.STORE_ENV]["value"] for container in containers] == [store] * 3


@pytest.mark.parametrize("job", ["quickstart", "7-layer-net", "a" * 47, "a" * 48, "x" + "-a" * 31, "9" * 63])
def test_rayjob_names_are_dns_1035_labels_kuberay_accepts(job: str) -> None:
    configmap, rayjob = render(job=job)
    name = rayjob["metadata"]["name"]
    assert re.fullmatch(DNS_1035, name) and len(name) <= 47
    assert name == k8s.rayjob_name(job)  # stable: a re-render updates the same RayJob
    prefixed = job if job[0].isalpha() else f"job-{job}"  # DNS-1035 starts with a letter
    if len(prefixed) > 47:  # cut, and told apart by a hash of the whole name
        assert re.fullmatch(r"[a-z0-9-]+-[0-9a-f]{6}", name) and prefixed.startswith(name[:-7])
    else:
        assert name == prefixed
    assert configmap["metadata"]["name"] == f"{name}-spec"
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]
    assert rayjob["metadata"]["labels"][k8s.JOB_LABEL] == job == configmap["metadata"]["labels"][k8s.JOB_LABEL]


def test_two_long_job_names_with_one_beginning_get_two_rayjobs() -> None:
    first, second = "a" * 60 + "-one", "a" * 60 + "-two"
    assert k8s.rayjob_name(first) != k8s.rayjob_name(second)


@pytest.mark.parametrize("job", ["Bad_Name", "", "-x", "x" * 64, "name."])
def test_an_invalid_job_name_is_refused(job: str) -> None:
    with pytest.raises(UsageError, match="job name"):
        render(job=job)


def test_the_spec_text_round_trips_through_the_configmap_and_the_yaml() -> None:
    text = CPU_SPEC + "# déjà vu: ünïcode, a trailing space \nseed: 3  \n"
    docs = render(text)
    assert docs[0]["data"][k8s.SPEC_FILE] == text
    dumped = k8s.dump_manifests(docs)
    assert dumped.startswith("---\n") and dumped.count("\n---\n") == 1
    assert list(yaml.safe_load_all(dumped)) == docs
    plain = k8s.dump_manifests(render())
    assert "spec.yaml: |" in plain and "  # a comment, kept\n" in plain  # a literal block: reads like the file


def test_a_job_name_other_than_the_specs_is_passed_to_run() -> None:
    _, rayjob = render(job="quickstart-2")
    assert rayjob["spec"]["entrypoint"] == f"{ENTRYPOINT} --name quickstart-2"
    _, nameless = render(CPU_SPEC.replace("name: quickstart\n", ""), job="quickstart")
    assert nameless["spec"]["entrypoint"] == f"{ENTRYPOINT} --name quickstart"
    _, same = render(job="quickstart")
    assert same["spec"]["entrypoint"] == ENTRYPOINT


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": {"function": "my_model.py:build"}}, "model.function"),
        ({"data": {"kind": "npz", "url": "data/train.npz"}}, "data.url"),
    ],
)
def test_a_spec_that_needs_files_beside_it_is_refused(change: Manifest, field: str) -> None:
    raw = {**yaml.safe_load(CPU_SPEC), **change}
    with pytest.raises(UsageError, match=f"{field}: got .* a path relative to the spec"):
        render(yaml.safe_dump(raw))


def test_absolute_paths_and_urls_in_a_spec_are_kept() -> None:
    raw = {**yaml.safe_load(CPU_SPEC), "model": {"function": "/opt/models/net.py:build"}}
    raw["data"] = {"kind": "npz", "url": "gs://bucket/data.npz"}
    assert render(yaml.safe_dump(raw))[0]["data"][k8s.SPEC_FILE] == yaml.safe_dump(raw)


def test_an_invalid_spec_is_a_spec_error_naming_its_source() -> None:
    with pytest.raises(SpecError, match=r"jobs/x\.yaml: 1 problem"):
        render(CPU_SPEC.replace("epochs: 2", "epochs: -2"), source="jobs/x.yaml")


def test_gpus_on_a_cluster_without_gpus_are_refused() -> None:
    with pytest.raises(UsageError, match="has no GPUs"):
        render(GPU_SPEC_TEXT, cluster="cpu-test")


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("cluster", "gke", "cluster: got 'gke', must be one of gke-spot-gpu, "),
        ("image", "Bad Image", "image"),
        ("namespace", "Team_A", "namespace"),
    ],
)
def test_a_bad_option_is_refused(option: str, value: str, problem: str) -> None:
    with pytest.raises(UsageError, match=re.escape(problem)):
        render(**{option: value})


def test_the_worker_group_is_sized_from_the_spec() -> None:
    scaling = "{workers: 3, cpus_per_worker: 2.5, gpus_per_worker: 2}"  # 6 replicas: a batch of 96 splits evenly
    text = CPU_SPEC.replace("{workers: 2, cpus_per_worker: 1}", scaling).replace("batch_size: 64", "batch_size: 96")
    _, rayjob = render(text, cluster="gke-spot-gpu")
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (3, 3, 3)
    resources = group["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "3", "memory": "12Gi", "nvidia.com/gpu": "2"} == resources["requests"]


@pytest.mark.parametrize("profile", k8s.CLUSTER_PROFILES)
def test_every_cluster_profile_renders_valid_objects(profile: str) -> None:
    text = GPU_SPEC_TEXT if k8s.CLUSTER_PROFILES[profile].gpus else CPU_SPEC
    docs = render(text, cluster=profile, namespace="team-a")
    for doc in docs:
        validate(doc)
    assert {doc["metadata"]["namespace"] for doc in docs} == {"team-a"}


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_rayjob_gives_the_job_the_runtime_env_submit_gives_it(name: str) -> None:
    """Keras 2, Ray Train's intervals and the warm pool's setup hook reach a RayJob's processes (without the hook,
    every restart on KubeRay would start cold)."""
    from orchestrator.launcher import job_runtime_env
    from orchestrator.worker.preload import HOOK

    runtime_env = yaml.safe_load(only(objects(name), "RayJob")["spec"]["runtimeEnvYAML"])
    assert runtime_env == job_runtime_env() and runtime_env["worker_process_setup_hook"] == HOOK
