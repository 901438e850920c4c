"""A real multi-node deployment on loopback, as operators run it: a Ray head that advertises no
`gpu_32gb`, two worker nodes that each advertise `gpu_32gb: 1` and one (fake) GPU, token auth on, and
`ray job submit` of the tiny pipeline into a real `mlflow server` (PostgreSQL backend, proxied artifacts,
basic auth) started by the deployment's own clusters/mlflow/entrypoint.sh.

The credentials live in the Ray nodes' environment (as a Kubernetes Secret puts them in the pods), not in
the job's runtime env. With fake GPUs the actors see CUDA_VISIBLE_DEVICES but no CUDA and train on the CPU.
Everything started here is stopped by PID: Ray nodes, the MLflow server, the PostgreSQL postmaster.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.support.mlflow_server import MlflowServer
from tests.support.postgres import Postgres
from tests.support.ray_cluster import BIN, RayCluster

pytestmark = pytest.mark.slow
PIPELINE = ["dyrank", "run", "examples/tiny.yaml", "--set", "baselines.ranks=[2]", "--set", "evaluation.ranks=[1,4,8]",
            "--set", "resources.trainer_gpus=1", "--set", "resources.evaluator_gpus=1",
            "--set", "resources.gpu_memory_resource=gpu_32gb", "--set", "resources.num_evaluators=2"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deployment")
    postgres = Postgres()
    server = cluster = None
    try:
        server = MlflowServer(postgres, folder)  # starting while the Ray nodes start
        os.environ.update(server.client_env)  # the driver's (via the Ray nodes' env) and this test's credentials
        cluster = RayCluster(folder, head_cpus=1)
        for nodes in (2, 3):  # one at a time: two workers registering at once can trip each other up
            cluster.add_worker(num_cpus=1, num_gpus=1, resources={"gpu_32gb": 1})
            cluster.wait_for_nodes(nodes)
        server.wait_ready()
        yield server, cluster
    finally:
        for key in server.client_env if server else ():
            os.environ.pop(key, None)
        if cluster is not None:
            cluster.stop()
        if server is not None:
            server.stop()
        postgres.stop()


def submit(cluster: RayCluster, name: str, **popen) -> subprocess.Popen:
    # The store's URI in the job's runtime env, as the README's `ray job submit` passes it; its credentials stay
    # in the nodes' environment. This is the suite's one `ray job submit` of a pipeline.
    runtime_env = {"env_vars": {"DYRANK_HOME": os.environ["DYRANK_HOME"],
                                "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}}
    return subprocess.Popen(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.address, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps(runtime_env), "--", *PIPELINE, "--set", f"name={name}"],
        env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen,
    )


def experiment_runs(name: str) -> list:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []


def by_kind(runs, kind):
    return [r for r in runs if r.data.tags.get("dyrank.kind") == kind]


def assert_complete_once(runs):
    """One pipeline, one train, one baseline, one zeroshot, one eval per rank: all FINISHED, none twice."""
    kinds = sorted(r.data.tags.get("dyrank.kind") for r in runs)
    assert kinds == ["baseline", "eval", "eval", "eval", "pipeline", "train", "zeroshot"], kinds
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert sorted(int(r.data.params["rank"]) for r in by_kind(runs, "eval")) == [1, 4, 8]
    parent = by_kind(runs, "pipeline")[0]
    assert {"best_rank", "best_eval_loss", "best_baseline_eval_loss"} <= parent.data.metrics.keys()
    client = MlflowClient()
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"adapter", "report", "config.yaml"}
    train = by_kind(runs, "train")[0]
    steps = [m.step for m in client.get_metric_history(train.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 41)), steps  # every step, once
    return parent


class StreamedOutput:
    """A process's output as it arrives, so the test waits for a line rather than for a fixed time."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.reader.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()  # the end of the output: waiters stop waiting

    def wait_for(self, text: str, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: any(text in line for line in self.lines) or not self.reader.is_alive(),
                                         timeout) and any(text in line for line in self.lines)

    @property
    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="module")
def pipeline_through_an_outage(deployment):
    """One `ray job submit` of the pipeline; once its training is recorded, the MLflow server is stopped until
    the driver reports it unreachable (it buffers and retries), then started again. Both tests read this one
    run (one pipeline, not two, keeps the suite short)."""
    server, cluster = deployment
    job = submit(cluster, "loopback")
    output = StreamedOutput(job)
    try:
        deadline = time.time() + 360
        while not by_kind(experiment_runs("loopback"), "train"):  # training recorded: the sweep is next
            assert job.poll() is None and time.time() < deadline, "the pipeline ended before the outage"
            time.sleep(0.5)
        down = time.time()
        server.stop()
        noticed = output.wait_for("is unreachable", timeout=240)
        finished_while_down = job.poll() is not None
        server.start()
        up = time.time()
        job.wait(timeout=300)
        output.reader.join(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    out = output.text
    assert noticed, f"the driver never reported the store down:\n{out[-4000:]}"
    assert job.returncode == 0 and "succeeded" in out, out[-4000:]
    return {"out": out, "down": down, "up": up, "finished_while_down": finished_while_down,
            "runs": experiment_runs("loopback"), "nodes": cluster.nodes_info()}


def test_trainers_run_on_the_gpu_32gb_workers_and_runs_land_in_the_server(pipeline_through_an_outage):
    nodes, runs = pipeline_through_an_outage["nodes"], pipeline_through_an_outage["runs"]
    head = {n["node_id"] for n in nodes if n["is_head_node"]}
    workers = {n["node_id"] for n in nodes if n["resources_total"].get("gpu_32gb") == 1}
    assert len(head) == 1 and len(workers) == 2 and not head & workers

    assert_complete_once(runs)  # read back from the server, through basic auth, as a non-admin user
    trainers = by_kind(runs, "train") + by_kind(runs, "baseline")
    placed = [r.data.tags["dyrank.node_id"] for r in trainers]
    assert set(placed) == workers, f"trainers on {placed}; head {head}, workers {workers}"  # one per worker
    assert all(r.data.tags["dyrank.gpu_ids"] == "0" for r in trainers)  # each got its worker's (fake) card
    assert all(r.data.tags["dyrank.node_id"] in workers for r in by_kind(runs, "eval"))


def test_a_tracking_outage_mid_pipeline_loses_nothing(pipeline_through_an_outage):
    run = pipeline_through_an_outage
    assert not run["finished_while_down"], "with the store down the pipeline must wait for it, not finish or fail"
    assert "is unreachable" in run["out"] and "is back after" in run["out"], run["out"][-4000:]
    assert_complete_once(run["runs"])  # every run once, FINISHED, every metric and artifact there
    # Runs that finished while the store was down carry their actors' own timestamps (buffered, not waited
    # for); none is required: on a quiet machine the tiny sweep can end before the store goes down.
