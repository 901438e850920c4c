"""The deployment files, checked statically (clusters/validate.py): the launcher YAML against Ray's own
autoscaler schema, the KubeRay manifests against KubeRay's documented API and the project's rules. Each
check is shown to catch the mistake it is for, on a copy of the real file with that one mistake in it."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

from clusters.validate import check_all, check_dockerfile, check_kubernetes, check_kuberay, check_launcher

CLUSTERS = Path(__file__).resolve().parents[2] / "clusters"
LAUNCHER = CLUSTERS / "launcher" / "aws-v100-32gb.yaml"
RAYCLUSTER = CLUSTERS / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTERS / "kuberay" / "rayjob.yaml"
MLFLOW = CLUSTERS / "kuberay" / "mlflow.yaml"


def test_every_deployment_file_passes():
    assert check_all() == []


def _workers(doc):
    return doc["spec"]["workerGroupSpecs"][0]


LAUNCHER_MISTAKES = [
    (lambda c: c["available_node_types"]["v100_32gb"]["resources"].update(gpu_32gb=0.5), "autoscaler schema"),
    (lambda c: c.update(max_worker=4), "autoscaler schema"),  # a typo: the schema has no such field
    (lambda c: c["available_node_types"]["head"]["resources"].update(gpu_32gb=1), "head node type"),
    (lambda c: c["available_node_types"]["v100_32gb"]["resources"].update(gpu_32gb=4), "one gpu_32gb per GPU"),
    (lambda c: c.update(head_start_ray_commands=[x.replace("127.0.0.1", "0.0.0.0") for x in c["head_start_ray_commands"]]),
     "must bind 127.0.0.1"),
    (lambda c: c.update(worker_start_ray_commands=["ray start --address=$RAY_HEAD_IP:6379"]), "RAY_AUTH_MODE=token"),
]


def _set_env(doc, name, value):
    doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append({"name": name, "value": value})


CLUSTER_MISTAKES = [
    (lambda d: d["spec"].update(workerGroupSpec=d["spec"].pop("workerGroupSpecs")), "unknown field of RayClusterSpec"),
    (lambda d: _workers(d)["rayStartParams"].update({"num-gpus": 1}), "must be a string"),
    (lambda d: _workers(d).update(minReplicas=3, maxReplicas=2), "minReplicas <= replicas <= maxReplicas"),
    (lambda d: d["spec"].pop("authOptions"), "authOptions.mode: must be token"),
    (lambda d: d["spec"]["autoscalerOptions"].update(upscalingMode="Fast"), "not one of Default"),
    (lambda d: d["spec"].update(rayVersion="2.40.0"), "but the project runs Ray"),
    (lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update(resources='"{\\"gpu_32gb\\": 1}"'), "head must advertise"),
    (lambda d: _workers(d)["rayStartParams"].update(resources='"{\\"gpu_32gb\\": 2}"'), "must agree"),
    (lambda d: _set_env(d, "MLFLOW_TRACKING_PASSWORD", "hunter2"), "literal value"),
    (lambda d: d["spec"]["headGroupSpec"].pop("template"), "needs template"),
]


JOB_MISTAKES = [
    (lambda d: d["spec"].update(shutdownAfterJobFinishes=True), "not allowed with clusterSelector"),
    (lambda d: d["spec"].update(submissionMode="K8sMode"), "not one of K8sJobMode"),
    (lambda d: d["spec"].pop("clusterSelector"), "exactly one of rayClusterSpec and clusterSelector"),
    (lambda d: d["spec"].update(runtimeEnvYAML="env_vars:\n  MLFLOW_TRACKING_PASSWORD: x\n"), "readable by anyone"),
    (lambda d: d["spec"].update(entrypoint="python train.py"), "expected a `dyrank ...` command"),
    (lambda d: d["spec"].update(ttlSecondsAfterFinished="60"), "expected integer"),
]


MISTAKES = ([(LAUNCHER, *m) for m in LAUNCHER_MISTAKES] + [(RAYCLUSTER, *m) for m in CLUSTER_MISTAKES]
            + [(RAYJOB, *m) for m in JOB_MISTAKES])


@pytest.mark.parametrize("source, mistake, expected", MISTAKES, ids=[f"{s.stem}-{e}" for s, _, e in MISTAKES])
def test_each_mistake_is_caught(tmp_path, source, mistake, expected):
    doc = yaml.safe_load(source.read_text())
    mistake(doc)
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(doc))
    check = check_launcher if source == LAUNCHER else check_kuberay
    problems, _ = check(path, ray.__version__)
    assert any(expected in p for p in problems), problems


def test_a_rayjob_with_its_own_cluster_is_checked_like_a_raycluster(tmp_path):
    job = yaml.safe_load(RAYJOB.read_text())
    cluster = yaml.safe_load(RAYCLUSTER.read_text())
    job["spec"].pop("clusterSelector")
    job["spec"]["rayClusterSpec"] = copy.deepcopy(cluster["spec"])
    job["spec"]["shutdownAfterJobFinishes"] = True
    path = tmp_path / "rayjob.yaml"
    path.write_text(yaml.safe_dump(job))
    assert check_kuberay(path, ray.__version__)[0] == []
    job["spec"]["rayClusterSpec"].pop("authOptions")
    path.write_text(yaml.safe_dump(job))
    assert any("must be token" in p for p in check_kuberay(path, ray.__version__)[0])


def test_the_mlflow_services_stay_inside_the_cluster(tmp_path):
    docs = list(yaml.safe_load_all(MLFLOW.read_text()))
    next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow")["spec"]["type"] = "LoadBalancer"
    path = tmp_path / "mlflow.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    assert any("use ClusterIP" in p for p in check_kubernetes(path))


def test_the_image_must_carry_the_projects_ray_and_torch(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text((CLUSTERS / "Dockerfile").read_text().replace("rayproject/ray:2.60.0", "rayproject/ray:2.40.0")
                    .replace("torch==2.13.0", "torch"))
    problems = check_dockerfile(path, ray.__version__)
    assert len(problems) == 2, problems


def test_the_compose_file_publishes_nothing_but_the_server_on_loopback():
    compose = yaml.safe_load((CLUSTERS / "mlflow" / "compose.yaml").read_text())
    assert "ports" not in compose["services"]["postgres"]
    assert compose["services"]["mlflow"]["ports"] == ["${MLFLOW_BIND:-127.0.0.1}:5000:5000"]


@pytest.mark.parametrize("missing", ["MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_DATABASE_URI"])
def test_the_mlflow_server_refuses_to_start_without_its_secrets(tmp_path, missing):
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path), "MLFLOW_BACKEND_STORE_URI": "postgresql://x",
           "MLFLOW_AUTH_DATABASE_URI": "postgresql://y", "MLFLOW_AUTH_ADMIN_PASSWORD": "p",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "k", "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path)}
    del env[missing]
    out = subprocess.run(["sh", str(CLUSTERS / "mlflow" / "entrypoint.sh")], env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode != 0 and missing in out.stderr
    assert not list(tmp_path.glob("*.ini")), "no auth config is written before every secret is there"


def test_the_mlflow_auth_config_is_a_fresh_0600_file_not_a_planted_one(tmp_path):
    """A file (or link) planted at the old fixed name in a shared /tmp is neither written through nor read."""
    planted = tmp_path / "mlflow-basic-auth.ini"
    planted.write_text("planted\n")
    planted.chmod(0o644)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "mlflow").write_text('#!/bin/sh\nstat -c "%a" "$MLFLOW_AUTH_CONFIG_PATH"\necho "$MLFLOW_AUTH_CONFIG_PATH"\n'
                                     'cat "$MLFLOW_AUTH_CONFIG_PATH"\n')
    (fake_bin / "mlflow").chmod(0o755)
    env = {"PATH": f"{fake_bin}:{os.environ['PATH']}", "TMPDIR": str(tmp_path), "MLFLOW_BACKEND_STORE_URI": "postgresql://x",
           "MLFLOW_AUTH_DATABASE_URI": "postgresql://u:secret@db/auth", "MLFLOW_AUTH_ADMIN_PASSWORD": "p",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "k", "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path)}
    out = subprocess.run(["sh", str(CLUSTERS / "mlflow" / "entrypoint.sh")], env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    mode, path, *config = out.stdout.splitlines()
    assert mode == "600" and path != str(planted) and Path(path).parent == tmp_path
    assert "database_uri = postgresql://u:secret@db/auth" in config
    assert planted.read_text() == "planted\n"
    asked = tmp_path / "conf" / "auth.ini"  # an explicit MLFLOW_AUTH_CONFIG_PATH: written beside it, renamed
    asked.parent.mkdir()
    out = subprocess.run(["sh", str(CLUSTERS / "mlflow" / "entrypoint.sh")], capture_output=True, text=True, timeout=30,
                         env={**env, "MLFLOW_AUTH_CONFIG_PATH": str(asked)})
    assert out.stdout.splitlines()[:2] == ["600", str(asked)] and list(asked.parent.iterdir()) == [asked]
