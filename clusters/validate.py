"""Static checks of the deployment files in clusters/, for what cannot be run here (a cloud, Kubernetes):

- the Ray launcher YAML against Ray's own autoscaler schema (ray/autoscaler/ray-schema.json, through
  Ray's validate_config), after filling in the provider's defaults as `ray up` does; `ray up` has no dry run;
- the KubeRay manifests against the fields of KubeRay's documented ray.io/v1 API that dyrank uses
  (RayCluster, RayJob; field names and enums from the KubeRay API reference, v1.5+), plus the rules
  KubeRay's webhook enforces on them (replica bounds, unique group names, a cluster or a selector);
- dyrank's own deployment rules: Ray token auth on, secrets only by reference, the head advertises no
  `gpu_32gb` and the GPU workers do (one per card), one Ray version and one image everywhere, no Service
  or port exposed beyond the cluster.

`python -m clusters.validate` checks every file and prints one line per problem (exit 1 if any).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
GPU_RESOURCE = "gpu_32gb"
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN", re.I)

# ---- KubeRay's ray.io/v1 API: the types and fields dyrank's manifests may use ------------------------
_STR, _INT, _BOOL, _NUM, _MAP, _ANY = "string", "integer", "boolean", "number", "map", "object"
_API: dict[str, dict[str, Any]] = {
    "RayCluster": {"apiVersion": _STR, "kind": _STR, "metadata": _ANY, "spec": "RayClusterSpec"},
    "RayJob": {"apiVersion": _STR, "kind": _STR, "metadata": _ANY, "spec": "RayJobSpec"},
    "RayClusterSpec": {
        "rayVersion": _STR, "authOptions": "AuthOptions", "enableInTreeAutoscaling": _BOOL,
        "autoscalerOptions": "AutoscalerOptions", "headServiceAnnotations": _MAP, "headGroupSpec": "HeadGroupSpec",
        "workerGroupSpecs": ["WorkerGroupSpec"], "suspend": _BOOL, "managedBy": _STR,
        "gcsFaultToleranceOptions": _ANY, "upgradeStrategy": _ANY,
    },
    "AuthOptions": {"mode": ("disabled", "token"), "secretName": _STR, "enableK8sTokenAuth": _BOOL},
    "AutoscalerOptions": {
        "resources": _ANY, "image": _STR, "imagePullPolicy": _STR, "securityContext": _ANY, "env": _ANY,
        "envFrom": _ANY, "volumeMounts": _ANY, "idleTimeoutSeconds": _INT,
        "upscalingMode": ("Default", "Aggressive", "Conservative"), "version": ("v1", "v2"),
    },
    "HeadGroupSpec": {
        "template": "PodTemplateSpec", "rayStartParams": "StartParams", "serviceType": _STR, "headService": _ANY,
        "enableIngress": _BOOL, "resources": _MAP, "labels": _MAP,
    },
    "WorkerGroupSpec": {
        "groupName": _STR, "replicas": _INT, "minReplicas": _INT, "maxReplicas": _INT, "idleTimeoutSeconds": _INT,
        "rayStartParams": "StartParams", "template": "PodTemplateSpec", "scaleStrategy": _ANY, "numOfHosts": _INT,
        "suspend": _BOOL, "resources": _MAP, "labels": _MAP,
    },
    "RayJobSpec": {
        "entrypoint": _STR, "runtimeEnvYAML": _STR, "jobId": _STR,
        "submissionMode": ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"),
        "shutdownAfterJobFinishes": _BOOL, "ttlSecondsAfterFinished": _INT, "activeDeadlineSeconds": _INT,
        "backoffLimit": _INT, "rayClusterSpec": "RayClusterSpec", "clusterSelector": _MAP,
        "submitterPodTemplate": _ANY, "submitterConfig": _ANY, "metadata": _MAP, "entrypointNumCpus": _NUM,
        "entrypointNumGpus": _NUM, "entrypointResources": _STR, "suspend": _BOOL, "managedBy": _STR,
        "deletionStrategy": _ANY,
    },
}
_REQUIRED = {
    "RayCluster": ["apiVersion", "kind", "metadata", "spec"], "RayJob": ["apiVersion", "kind", "metadata", "spec"],
    "RayClusterSpec": ["headGroupSpec"], "HeadGroupSpec": ["template"], "WorkerGroupSpec": ["groupName", "template"],
}
_PYTHON_TYPES = {_STR: str, _INT: int, _BOOL: bool, _NUM: (int, float), _MAP: dict}


def _check_type(value: Any, kind: Any, where: str, problems: list[str]) -> None:
    if kind == _ANY:
        return
    if isinstance(kind, tuple):
        if value not in kind:
            problems.append(f"{where}: {value!r} is not one of {', '.join(kind)}")
    elif isinstance(kind, list):
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list")
            return
        for i, item in enumerate(value):
            _check_type(item, kind[0], f"{where}[{i}]", problems)
    elif kind in _PYTHON_TYPES:
        expected = _PYTHON_TYPES[kind]
        if not isinstance(value, expected) or (kind in (_INT, _NUM) and isinstance(value, bool)):
            problems.append(f"{where}: expected {kind}, got {type(value).__name__}")
    elif kind == "StartParams":  # map[string]string: KubeRay passes each to `ray start` verbatim
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a map")
            return
        problems += [f"{where}.{k}: must be a string (quote it), got {type(v).__name__}"
                     for k, v in value.items() if not isinstance(v, str)]
    elif kind == "PodTemplateSpec":
        containers = (value or {}).get("spec", {}).get("containers") if isinstance(value, dict) else None
        if not containers or not all(isinstance(c, dict) and c.get("name") and c.get("image") for c in containers):
            problems.append(f"{where}.spec.containers: needs at least one container, each with a name and an image")
    else:
        _check_object(value, kind, where, problems)


def _check_object(value: Any, kind: str, where: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a {kind} mapping")
        return
    fields = _API[kind]
    problems += [f"{where}.{key}: unknown field of {kind}" for key in value if key not in fields]
    problems += [f"{where}: {kind} needs {key}" for key in _REQUIRED.get(kind, []) if key not in value]
    for key, item in value.items():
        if key in fields:
            _check_type(item, fields[key], f"{where}.{key}", problems)


def start_resources(params: dict, where: str, problems: list[str]) -> dict:
    """rayStartParams.resources, as KubeRay writes it: a quoted JSON object, e.g. '"{\\"gpu_32gb\\": 1}"'."""
    text = params.get("resources")
    if text is None:
        return {}
    try:
        parsed = json.loads(text)
        parsed = json.loads(parsed) if isinstance(parsed, str) else parsed
        if not isinstance(parsed, dict):
            raise ValueError
        return parsed
    except ValueError:
        problems.append(f"{where}.rayStartParams.resources: not a (quoted) JSON object: {text!r}")
        return {}


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


# ---- the project's rules on a RayCluster spec ----------------------------------------------------------
def _check_cluster_spec(spec: dict, where: str, ray_version: str, problems: list[str]) -> set[str]:
    """KubeRay's webhook rules and dyrank's; returns the images the cluster runs."""
    if spec.get("rayVersion") != ray_version:
        problems.append(f"{where}.rayVersion: {spec.get('rayVersion')!r}, but the project runs Ray {ray_version}")
    if (spec.get("authOptions") or {}).get("mode") != "token":
        problems.append(f"{where}.authOptions.mode: must be token (the Jobs API runs code for whoever reaches it)")
    elif _version_tuple(str(spec.get("rayVersion", "0"))) < (2, 52):
        problems.append(f"{where}: token auth needs rayVersion >= 2.52.0")
    images: set[str] = set()
    head = spec.get("headGroupSpec") or {}
    params = head.get("rayStartParams") or {}
    if GPU_RESOURCE in start_resources(params, f"{where}.headGroupSpec", problems) or params.get("num-gpus", "0") != "0":
        problems.append(f"{where}.headGroupSpec: the head must advertise no GPU and no {GPU_RESOURCE} (drivers only)")
    images |= _check_pod(head.get("template") or {}, f"{where}.headGroupSpec.template", problems)
    names = [g.get("groupName") for g in spec.get("workerGroupSpecs") or []]
    if len(names) != len(set(names)):
        problems.append(f"{where}.workerGroupSpecs: group names repeat: {names}")
    gpu_groups = 0
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        at = f"{where}.workerGroupSpecs[{i}]"
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31)
        if not low <= group.get("replicas", low) <= high:
            problems.append(f"{at}: needs minReplicas <= replicas <= maxReplicas")
        template = group.get("template") or {}
        images |= _check_pod(template, f"{at}.template", problems)
        advertised = start_resources(group.get("rayStartParams") or {}, at, problems).get(GPU_RESOURCE)
        if advertised is None:
            continue
        gpu_groups += 1
        cards = [str((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", "0"))
                 for c in (template.get("spec") or {}).get("containers", [])[:1]]
        num_gpus = (group.get("rayStartParams") or {}).get("num-gpus")
        if [str(advertised)] != cards or num_gpus != str(advertised):
            problems.append(f"{at}: {GPU_RESOURCE} ({advertised}), num-gpus ({num_gpus}) and the container's "
                            f"nvidia.com/gpu limit ({cards}) must agree: one {GPU_RESOURCE} per card")
    if not gpu_groups:
        problems.append(f"{where}.workerGroupSpecs: no group advertises {GPU_RESOURCE}")
    return images


def _check_pod(template: dict, where: str, problems: list[str]) -> set[str]:
    containers = (template.get("spec") or {}).get("containers") or []
    for c in containers:
        for env in c.get("env") or []:
            if SECRET_NAMES.search(env.get("name", "")) and "value" in env:
                problems.append(f"{where}: env {env['name']} holds a literal value; use valueFrom.secretKeyRef")
    return {c["image"] for c in containers if isinstance(c, dict) and c.get("image")}


def _check_job_spec(spec: dict, where: str, problems: list[str]) -> None:
    if ("rayClusterSpec" in spec) == ("clusterSelector" in spec):
        problems.append(f"{where}: give exactly one of rayClusterSpec and clusterSelector")
    if spec.get("clusterSelector") and spec.get("shutdownAfterJobFinishes"):
        problems.append(f"{where}.shutdownAfterJobFinishes: not allowed with clusterSelector (the cluster is shared)")
    if spec.get("submissionMode") != "InteractiveMode" and not str(spec.get("entrypoint", "")).startswith("dyrank "):
        problems.append(f"{where}.entrypoint: expected a `dyrank ...` command, got {spec.get('entrypoint')!r}")
    if "runtimeEnvYAML" in spec:
        try:
            env = yaml.safe_load(spec["runtimeEnvYAML"])
        except yaml.YAMLError as exc:
            problems.append(f"{where}.runtimeEnvYAML: not YAML: {exc}")
            return
        if not isinstance(env, dict):
            problems.append(f"{where}.runtimeEnvYAML: must be a mapping")
            return
        leaked = [k for k in (env.get("env_vars") or {}) if SECRET_NAMES.search(k)]
        if leaked:
            problems.append(f"{where}.runtimeEnvYAML: {leaked} would be readable by anyone with the Ray token; "
                            "give them to the head pod from a Secret")


def check_kuberay(path: Path, ray_version: str) -> tuple[list[str], set[str]]:
    """Problems in a file of RayCluster/RayJob documents, and the images they run."""
    problems: list[str] = []
    images: set[str] = set()
    for n, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d is not None):
        kind = doc.get("kind") if isinstance(doc, dict) else None
        where = f"{path.name}[{n}] {kind}"
        if kind not in ("RayCluster", "RayJob") or doc.get("apiVersion") != "ray.io/v1":
            problems.append(f"{where}: expected apiVersion ray.io/v1, kind RayCluster or RayJob")
            continue
        _check_object(doc, kind, where, problems)
        spec = doc.get("spec") or {}
        if kind == "RayJob":
            _check_job_spec(spec, f"{where}.spec", problems)
            spec = spec.get("rayClusterSpec")
            where += ".spec.rayClusterSpec"
        if spec:
            images |= _check_cluster_spec(spec, f"{where}.spec" if kind == "RayCluster" else where, ray_version, problems)
    return problems, images


def check_kubernetes(path: Path) -> list[str]:
    """Plain Kubernetes objects (the MLflow server): nothing exposed outside the cluster, secrets by reference."""
    problems = []
    for n, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d is not None):
        where = f"{path.name}[{n}] {doc.get('kind')}"
        if doc.get("kind") == "Service" and doc.get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"{where}: Service type {doc['spec']['type']} exposes it outside the cluster; use ClusterIP")
        template = (doc.get("spec") or {}).get("template")
        if template:
            _check_pod(template, where, problems)
    return problems


# ---- the Ray cluster launcher --------------------------------------------------------------------------
def check_launcher(path: Path, ray_version: str) -> tuple[list[str], set[str]]:
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = yaml.safe_load(path.read_text())
    problems = []
    try:
        validate_config(config)
        validate_config(fillout_defaults(copy.deepcopy(config)))  # as `ray up` sees it
    except Exception as exc:  # jsonschema.ValidationError, ValueError: both name the field
        problems.append(f"{path.name}: Ray's autoscaler schema: {str(exc).splitlines()[0]}")
    types = config.get("available_node_types") or {}
    head = types.get(config.get("head_node_type"), {})
    if head.get("resources", {}).get(GPU_RESOURCE) or head.get("resources", {}).get("GPU"):
        problems.append(f"{path.name}: the head node type must advertise no GPU and no {GPU_RESOURCE}")
    workers = [t for name, t in types.items() if name != config.get("head_node_type")]
    if not any(t.get("resources", {}).get(GPU_RESOURCE) == t.get("resources", {}).get("GPU", -1) for t in workers):
        problems.append(f"{path.name}: no worker node type advertises one {GPU_RESOURCE} per GPU")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config.get(key, []) if "ray start" in c]
        if not starts or not all("RAY_AUTH_MODE=token" in c for c in starts):
            problems.append(f"{path.name}: {key}: every `ray start` needs RAY_AUTH_MODE=token")
    if not any("--dashboard-host=127.0.0.1" in c for c in config.get("head_start_ray_commands", [])):
        problems.append(f"{path.name}: the head's dashboard/Jobs API must bind 127.0.0.1 (reach it with `ray dashboard`)")
    image = (config.get("docker") or {}).get("image", "")
    if f"ray{ray_version}" not in image:
        problems.append(f"{path.name}: docker.image {image!r} does not name Ray {ray_version}")
    return problems, {image}


def check_dockerfile(path: Path, ray_version: str) -> list[str]:
    text = path.read_text()
    problems = []
    if not re.search(rf"^FROM rayproject/ray:{re.escape(ray_version)}-", text, re.M):
        problems.append(f"{path.name}: FROM must be rayproject/ray:{ray_version}-... (the project's Ray)")
    pinned = re.search(r'"torch==([^"]+)"', (HERE.parent / "pyproject.toml").read_text())
    if pinned and f"torch=={pinned.group(1)}" not in text:
        problems.append(f"{path.name}: must install torch=={pinned.group(1)}, as pyproject.toml pins it")
    return problems


def check_all(folder: Path = HERE) -> list[str]:
    import ray

    version = ray.__version__
    problems = check_dockerfile(folder / "Dockerfile", version)
    images: set[str] = set()
    for path in sorted((folder / "launcher").glob("*.yaml")):
        found, used = check_launcher(path, version)
        problems += found
        images |= used
    for path in sorted((folder / "kuberay").glob("*.yaml")):
        kinds = {d.get("kind") for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)}
        if kinds & {"RayCluster", "RayJob"}:
            found, used = check_kuberay(path, version)
            problems += found
            images |= used
        else:
            problems += check_kubernetes(path)
    if len(images) > 1:
        problems.append(f"the launcher and the KubeRay manifests run different images: {sorted(images)}")
    return problems


def main() -> int:
    problems = check_all()
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
