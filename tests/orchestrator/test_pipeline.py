"""The pipeline end to end on the tiny model, read back through MlflowClient (deleted runs included)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import mlflow
import pytest
import ray
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from dashboards.summary import write_pipeline_outputs
from evaluators.metrics import evaluate
from orchestrator.pipeline import run_pipeline
from tests.conftest import FIXTURES, temp_tracking_store, tiny_config
from tests.support.evaluator_faults import KILL_RANK_ENV, KILL_SPLIT_ENV, SCORE_LOG_ENV, score_log
from tests.support.mlflow_record import record_of
from trainers.batching import encode_all
from trainers.costs import COST_KEYS
from trainers.datasets.splits import load_splits
from peft import PeftModel

from trainers.models import dequantize_once, load_base_model, load_tokenizer, quant_settings, resolve_base

pytestmark = pytest.mark.slow


def all_runs(uri: str, parent_id: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], run_view_type=ViewType.ALL, max_results=10_000)


def children(runs, parent_id, kind):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id and r.data.tags.get("dyrank.kind") == kind]


def assert_every_rank_once(runs, parent_id, ranks):
    evals = children(runs, parent_id, "eval")
    recorded = sorted(int(r.data.params["rank"]) for r in evals)
    assert recorded == list(ranks), f"eval runs by rank: {recorded}"
    assert all(r.info.status == "FINISHED" for r in evals)
    assert all(r.info.lifecycle_stage == "active" for r in runs), "a run was deleted"


@pytest.fixture
def tracking(tmp_path):
    with temp_tracking_store(tmp_path) as uri:
        yield uri


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """One tiny pipeline for the read-back tests: ranks 1..8, QLoRA baselines at 2 and 8."""
    events = []
    with temp_tracking_store(tmp_path_factory.mktemp("pipeline")) as uri:
        cfg = tiny_config()
        result = run_pipeline(cfg, on_event=lambda kind, payload: events.append((kind, payload)),
                              write_outputs=write_pipeline_outputs)
    return cfg, uri, result, events, all_runs(uri, result.parent_run_id)


def test_every_rank_recorded_once_with_baselines_and_zeroshot(pipeline):
    cfg, uri, result, _, runs = pipeline
    parent = result.parent_run_id
    assert_every_rank_once(runs, parent, range(1, 9))
    assert sorted(int(r.data.params["rank"]) for r in children(runs, parent, "baseline")) == [2, 8]
    assert len(children(runs, parent, "train")) == 1 and len(children(runs, parent, "zeroshot")) == 1
    for run in children(runs, parent, "eval") + children(runs, parent, "baseline"):
        assert {"eval_loss", "eval_perplexity", "eval_exact_match"} <= run.data.metrics.keys()
        assert run.data.params["method"] in ("qdylora", "qlora") and run.data.tags["dyrank.actor_id"]
    for run in children(runs, parent, "baseline"):
        m = run.data.metrics
        assert {"test_loss", "test_gen_exact_match"} <= m.keys()
        assert m["test_loss_ci_low"] <= m["test_loss"] <= m["test_loss_ci_high"]
    chosen = next(r for r in runs if r.info.run_id == parent).data.metrics  # the selected rank on test
    assert chosen["selected_test_loss_ci_low"] <= chosen["selected_test_loss"] <= chosen["selected_test_loss_ci_high"]
    assert "selected_test_gen_exact_match_ci_high" in chosen
    parent_run = next(r for r in runs if r.info.run_id == parent)
    assert parent_run.info.status == "FINISHED" and parent_run.data.tags["dyrank.kind"] == "pipeline"
    params = parent_run.data.params  # what data the run saw: size and content hash of every split
    splits = load_splits(cfg.data)
    for name in ("train", "validation", "test"):
        assert int(params[f"data.{name}.records"]) == len(splits[name]) > 0
        assert len(params[f"data.{name}.sha256"]) == 64


def test_selected_rank_is_the_policy_applied_to_recorded_metrics(pipeline):
    cfg, uri, result, _, runs = pipeline
    rows = [{"rank": int(r.data.params["rank"]), **r.data.metrics} for r in children(runs, result.parent_run_id, "eval")]
    assert cfg.selection.policy == "best"  # the lowest validation loss, ties to the smaller rank
    expected = min(rows, key=lambda row: (row["eval_loss"], row["rank"]))["rank"]
    parent = MlflowClient(uri).get_run(result.parent_run_id).data
    assert parent.metrics["best_rank"] == expected == result.selected_rank
    baselines = {int(r.data.params["rank"]): r.data.metrics["eval_loss"] for r in children(runs, result.parent_run_id, "baseline")}
    assert parent.metrics["best_baseline_eval_loss"] == pytest.approx(min(baselines.values()))
    assert parent.metrics["eval_loss_minus_best_baseline"] == pytest.approx(parent.metrics["best_eval_loss"] - min(baselines.values()))
    assert {"train_device_seconds", "eval_device_seconds", "selected_test_loss"} <= parent.metrics.keys()
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(result.parent_run_id)}
    assert {"adapter", "config.yaml", "report"} <= artifacts
    report = {a.path for a in MlflowClient(uri).list_artifacts(result.parent_run_id, "report")}
    assert {"report/rank_vs_metric.png", "report/ranks.csv", "report/summary.txt"} <= report


def test_ranks_csv_holds_the_values_each_run_recorded(pipeline, tmp_path):
    """report/ranks.csv, read back from the parent run: one row per rank and per baseline, each value the one its
    own MLflow run recorded (costs for the trained jobs)."""
    _, uri, result, _, runs = pipeline
    path = MlflowClient(uri).download_artifacts(result.parent_run_id, "report/ranks.csv", str(tmp_path))
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    recorded = {("qdylora", int(r.data.params["rank"])): r.data.metrics for r in children(runs, result.parent_run_id, "eval")}
    baselines = children(runs, result.parent_run_id, "baseline")
    recorded |= {(r.data.params["method"], int(r.data.params["rank"])): r.data.metrics for r in baselines}
    assert [(row["method"], int(row["rank"])) for row in rows] == sorted(recorded)
    for row in rows:
        metrics = recorded[(row["method"], int(row["rank"]))]
        filled = {key: float(value) for key, value in row.items() if key not in ("method", "rank") and value != ""}
        assert {"eval_loss", "eval_perplexity", "eval_exact_match"} <= filled.keys()
        if row["method"] == "qlora":
            assert set(COST_KEYS) <= filled.keys()
        assert filled == pytest.approx({key: metrics[key] for key in filled}, rel=1e-9), row


def test_record_keys_are_those_the_previous_release_wrote(pipeline):
    """Param, tag, metric and artifact names of every run, as the code at a83f95e recorded the same config
    (tests/fixtures/store-a83f95e/record.json); only the provenance tags are new."""
    _, uri, result, _, _ = pipeline
    before = json.loads((FIXTURES / "store-a83f95e" / "record.json").read_text())["runs"]
    after = record_of(uri, result.parent_run_id)
    new = after["pipeline"]  # issue 20 adds, on the parent only: the selected adapter (carded) and its pyfunc model
    new["tags"].remove("dyrank.registered_model")
    assert {"selected_adapter/README.md", "selected_adapter/adapter_config.json",
            "selected_model/MLmodel"} <= set(new["artifacts"])
    new["artifacts"] = [a for a in new["artifacts"] if not a.startswith(("selected_adapter/", "selected_model/"))]
    harness = [p for p in new["params"] if p.startswith("evaluation.harness.")]  # issue 21: the harness options
    assert harness == ["evaluation.harness.batch_size", "evaluation.harness.every_rank", "evaluation.harness.limit",
                       "evaluation.harness.tasks"], harness
    new["params"] = [p for p in new["params"] if p not in harness]
    # issue 16: ranks per batched forward, each run's torch threads, the parent's per-actor reservation metrics
    new["params"].remove("evaluation.ranks_per_forward")
    reserved = ("_reserved_device_seconds", "_busy_device_seconds", "_idle_device_seconds", "_torch_threads")
    totals = ("reserved_device_seconds", "idle_device_seconds", "idle_share")
    new["metrics"] = [m for m in new["metrics"] if not m.endswith(reserved) and m not in totals]
    for run in after.values():
        if "torch_threads" in run["params"]:
            run["params"].remove("torch_threads")
        if "torch_threads" in run.get("metrics", []):  # a training's threads per step (they follow freed cores)
            run["metrics"].remove("torch_threads")
    # issue 15: how a rank is applied in training (slice or mask) and the chunked training loss
    new["params"].remove("adapter.rank_application")
    new["params"].remove("training.loss_chunk_tokens")
    _drop_issue17_keys(after, before)
    assert sorted(after) == sorted(before)
    for key in before:
        assert after[key] == before[key], key
    provenance = MlflowClient(uri).get_run(result.parent_run_id).data.tags
    assert {f"dyrank.provenance.{k}" for k in ("version", "commit", "device", "torch", "transformers", "peft",
                                               "bitsandbytes", "ray", "mlflow")} <= provenance.keys()


# Issue 17 adds: per-example arrays on every scored run, test scores at the QLoRA grid's ranks, the baselines'
# scoring time, the fidelity block on the parent and the new selection / training knobs.
ISSUE17 = {
    "artifacts": ("per_example/", "fidelity/"),
    "metrics": ("fidelity_", "curve_", "score_seconds", "test_"),
    "params": ("selection.margin", "selection.confidence", "training.eval_every", "training.eval_samples"),
    "tags": ("dyrank.fidelity.grid",),
}


def _drop_issue17_keys(after: dict, before: dict) -> None:
    for key, run in after.items():
        for field, prefixes in ISSUE17.items():
            if isinstance(run.get(field), list):
                kept = before.get(key, {}).get(field, [])
                run[field] = [x for x in run[field] if x in kept or not x.startswith(prefixes)]


def test_each_evaluator_loaded_the_base_once(pipeline):
    _, uri, result, _, _ = pipeline
    loads = json.loads(MlflowClient(uri).get_run(result.parent_run_id).data.tags["dyrank.evaluator_base_loads"])
    assert len(loads) == 2 and set(loads.values()) == {1}


def test_baselines_trained_in_parallel_with_qdylora(pipeline):
    _, _, result, _, runs = pipeline
    [train] = children(runs, result.parent_run_id, "train")
    for base in children(runs, result.parent_run_id, "baseline"):
        assert base.info.start_time < train.info.end_time and train.info.start_time < base.info.end_time
        assert base.data.tags["dyrank.actor_id"] != train.data.tags["dyrank.actor_id"]


def test_train_run_records_the_sampled_rank_of_every_step(pipeline):
    cfg, uri, result, _, runs = pipeline
    [train] = children(runs, result.parent_run_id, "train")
    history = MlflowClient(uri).get_metric_history(train.info.run_id, "sampled_rank")
    assert sorted(m.step for m in history) == list(range(1, cfg.training.max_steps + 1))
    assert {m.value for m in history} <= set(range(1, 9))


def test_selected_adapter_is_registered_carded_and_the_data_logged(pipeline, tmp_path, monkeypatch):
    cfg, uri, result, _, _ = pipeline
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias(cfg.name, "selected")
    assert version.tags == {"rank": str(result.selected_rank), "method": "qdylora", "pipeline_run": result.parent_run_id}
    inputs = client.get_run(result.parent_run_id).inputs.dataset_inputs
    assert sorted(i.tags[0].value for i in inputs) == ["test", "train", "validation"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    [answer] = mlflow.pyfunc.load_model(f"models:/{cfg.name}@selected").predict(["What is 2 + 3?"])
    assert isinstance(answer, str)
    from orchestrator.cli import main

    out = tmp_path / "selected"
    assert main(["export", result.parent_run_id, "--rank", str(result.selected_rank), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and f"Rank {result.selected_rank} was selected by policy `best`" in card
    assert "| test | loss |" in card and "| train |" in card and f"MLflow pipeline run: {result.parent_run_id}" in card


@pytest.mark.parametrize("rank", [1, 4, 8])
def test_recorded_loss_equals_exported_adapter_in_plain_peft(pipeline, tmp_path, rank, monkeypatch):
    cfg, uri, result, _, runs = pipeline
    from orchestrator.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["export", result.parent_run_id, "--rank", str(rank), "--out", str(tmp_path / "adapter")]) == 0
    base = resolve_base(cfg.model.source)
    tokenizer = load_tokenizer(base)
    # plain PEFT on the same NF4 base, dequantized once as the evaluators do (evaluation.dequantize_base)
    nf4 = dequantize_once(load_base_model(base, quant_settings(cfg)), cfg.quantization.compute_dtype)
    model = PeftModel.from_pretrained(nf4, str(tmp_path / "adapter")).eval()
    examples = encode_all(load_splits(cfg.data)["validation"], tokenizer, cfg.data.max_seq_len)
    loss = evaluate(model, examples, tokenizer, cfg.evaluation.batch_size)["eval_loss"]
    recorded = {int(r.data.params["rank"]): r.data.metrics["eval_loss"] for r in children(runs, result.parent_run_id, "eval")}
    assert loss == pytest.approx(recorded[rank], rel=1e-4)
    assert len({round(recorded[r], 6) for r in (1, 4, 8)}) == 3, "ranks must give different losses"


def test_fake_gpus_place_each_trainer_on_its_own_card(tracking):
    ray.init(address="local", num_cpus=2, num_gpus=2, resources={"gpu_32gb": 2}, include_dashboard=False)
    cfg = tiny_config("baselines.ranks=[2]", "resources.trainer_gpus=1", "resources.gpu_memory_resource=gpu_32gb",
                      "resources.num_evaluators=1", "evaluation.ranks=[1,8]")
    result = run_pipeline(cfg)
    runs = all_runs(tracking, result.parent_run_id)
    trainers = children(runs, result.parent_run_id, "train") + children(runs, result.parent_run_id, "baseline")
    gpus = [r.data.tags["dyrank.gpu_ids"] for r in trainers]
    assert sorted(gpus) == ["0", "1"], gpus  # one card each, both cards used
    assert all(r.data.tags["dyrank.gpu_ids"] == "" for r in children(runs, result.parent_run_id, "eval"))


def test_evaluator_killed_mid_rank_is_restarted_and_scores_that_rank_once(tracking, tmp_path, monkeypatch):
    """The evaluator scoring rank 5 dies inside that rank (tests/support/evaluator_faults.py); Ray restarts the
    same actor in a new process, which scores rank 5 again, and rank 5 is recorded once, from that actor."""
    log, killed_rank = tmp_path / "scores.jsonl", 5
    monkeypatch.setenv(KILL_RANK_ENV, str(killed_rank))
    monkeypatch.setenv(SCORE_LOG_ENV, str(log))
    # Ray's workers import the hook from `tests`, which only pytest's own sys.path holds: give them the checkout
    repo = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": "tests.support.evaluator_faults.install"})
    result = run_pipeline(tiny_config("baselines.ranks=[]"))

    attempts = [c for c in score_log(log) if killed_rank in c["ranks"] and c["split"] == "validation"]
    assert len(attempts) == 2, attempts  # the one killed, the retry
    killed, retry = attempts
    assert retry["actor"] == killed["actor"] and retry["pid"] != killed["pid"], "not the same actor restarted"
    runs = all_runs(tracking, result.parent_run_id)
    assert_every_rank_once(runs, result.parent_run_id, range(1, 9))
    [run] = [r for r in children(runs, result.parent_run_id, "eval") if int(r.data.params["rank"]) == killed_rank]
    assert run.data.tags["dyrank.actor_id"] == killed["actor"]


def test_the_last_evaluator_dying_after_the_others_were_released_is_replaced(tracking, tmp_path, monkeypatch):
    """Issue 16's risk: the sweep releases idle evaluators and keeps one for the test scoring. That one dies
    for good there (no restarts left); a fresh evaluator takes the released one's place and scores the
    selected rank on test, instead of the run failing with every evaluator dead."""
    log = tmp_path / "scores.jsonl"
    monkeypatch.setenv(KILL_RANK_ENV, "any")
    monkeypatch.setenv(KILL_SPLIT_ENV, "test")
    monkeypatch.setenv(SCORE_LOG_ENV, str(log))
    repo = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": "tests.support.evaluator_faults.install"})
    result = run_pipeline(tiny_config("baselines.ranks=[]", "resources.max_restarts=0", "resources.num_evaluators=2"))

    calls = score_log(log)
    sweepers = {c["actor"] for c in calls if c["split"] == "validation"}
    killed, scored = [c for c in calls if c["split"] == "test"]
    assert len(sweepers) == 2 and killed["actor"] in sweepers, calls  # the one kept for the test scoring died
    assert scored["actor"] not in sweepers and scored["ranks"] == killed["ranks"] == [result.selected_rank]
    [run] = [r for r in children(all_runs(tracking, result.parent_run_id), result.parent_run_id, "eval")
             if int(r.data.params["rank"]) == result.selected_rank]
    assert run.info.status == "FINISHED" and "test_loss" in run.data.metrics


def test_parent_records_each_actors_idle_reservation_consistently(pipeline):
    # Issue 16: device-seconds reserved but idle, per actor. Busy time is measured inside the actor, reserved
    # time from its placement to its release: busy can never exceed reserved, and the totals add up.
    _, uri, result, _, _ = pipeline
    metrics = MlflowClient(uri).get_run(result.parent_run_id).data.metrics
    actors = sorted(k.removesuffix("_reserved_device_seconds") for k in metrics
                    if k.endswith("_reserved_device_seconds") and k != "reserved_device_seconds")
    # three trainers (QDyLoRA, QLoRA r2 and r8) and the two evaluators
    assert actors == ["evaluator_0", "evaluator_1", "trainer_baseline_qlora_r2", "trainer_baseline_qlora_r8",
                      "trainer_train"], actors
    for actor in actors:
        reserved, busy = metrics[f"{actor}_reserved_device_seconds"], metrics[f"{actor}_busy_device_seconds"]
        assert 0 < busy <= reserved, actor
        assert metrics[f"{actor}_idle_device_seconds"] == pytest.approx(reserved - busy), actor
        assert metrics[f"{actor}_torch_threads"] >= 1, actor
    assert metrics["reserved_device_seconds"] == pytest.approx(sum(metrics[f"{a}_reserved_device_seconds"] for a in actors))
    assert metrics["idle_share"] == pytest.approx(metrics["idle_device_seconds"] / metrics["reserved_device_seconds"])


def test_runs_record_their_torch_threads(pipeline):
    _, _, result, _, runs = pipeline
    for kind in ("train", "eval", "baseline"):
        for run in children(runs, result.parent_run_id, kind):
            assert int(run.data.params["torch_threads"]) >= 1, (kind, run.info.run_name)


def test_on_logical_gpus_idle_reservations_stay_under_a_tenth_with_the_same_results(pipeline, tracking):
    """Issue 16: on a private Ray declaring 2 logical GPUs, 0.5 a trainer or evaluator, the device-seconds held but
    idle stay under 10 % of those reserved (evaluators are reserved once the adapter exists and released when
    their work runs out; with the pool started beside the trainers this was 0.57), and the pipeline's results are
    the CPU-only pipeline's: the same selected rank, the same loss at every rank."""
    _, _, on_cpus, _, _ = pipeline
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False)
    # one rank per task, as on the CPUs (evaluators holding a GPU would default to 8)
    cfg = tiny_config("resources.trainer_gpus=0.5", "resources.evaluator_gpus=0.5", "evaluation.ranks_per_forward=1")
    result = run_pipeline(cfg)
    metrics = MlflowClient(tracking).get_run(result.parent_run_id).data.metrics
    # device-seconds are GPU-seconds here: each actor's reserved seconds times the 0.5 GPU it holds
    evaluator_seconds = [metrics[f"evaluator_{i}_reserved_device_seconds"] for i in range(2)]
    assert all(s > 0 for s in evaluator_seconds), evaluator_seconds
    assert metrics["idle_share"] < 0.10, {k: v for k, v in metrics.items() if "device_seconds" in k or k == "idle_share"}
    assert result.selected_rank == on_cpus.selected_rank
    losses = {row["rank"]: row["eval_loss"] for row in result.ranks}
    assert losses == pytest.approx({row["rank"]: row["eval_loss"] for row in on_cpus.ranks}, rel=1e-4)


def test_a_trainer_left_alone_takes_the_cores_the_finished_one_freed(tracking):
    """Two trainers on 2 CPUs start with one torch thread each; once the baseline's trainer is released the
    QDyLoRA training, between two steps, goes on with both cores' threads (recorded per step on its run)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    cfg = tiny_config("baselines.ranks=[2]", "evaluation.ranks=[1,8]", "training.max_steps=12",
                      "training.checkpoint_every=12")

    def wait_for_the_baseline(row: dict) -> bool:  # runs in the QDyLoRA trainer, after each step
        if row["step"] == 2:
            import time as clock

            from ray.util import list_named_actors

            deadline = clock.time() + 300
            while clock.time() < deadline and any(name.startswith("Trainer-") and "-baseline-" in name
                                                   for name in list_named_actors()):  # Trainer-<parent>-baseline-...
                clock.sleep(0.2)
            clock.sleep(2)  # the driver sends the new share right after it releases the baseline's trainer
        return False

    result = run_pipeline(cfg, step_sink=wait_for_the_baseline)
    [train] = children(all_runs(tracking, result.parent_run_id), result.parent_run_id, "train")
    history = sorted(MlflowClient(tracking).get_metric_history(train.info.run_id, "torch_threads"), key=lambda m: m.step)
    threads = [int(m.value) for m in history]
    assert [m.step for m in history] == list(range(1, 13))
    assert threads[:2] == [1, 1] and threads[-1] == 2, threads
    assert threads == sorted(threads), "threads changed once, between two steps"
