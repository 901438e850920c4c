"""lm-evaluation-harness at any rank: our shipped offline task runs on the tiny model, several ranks share one
base load, and the rank really switches between harness runs. The harness extra is part of the test install
(`make test` installs .[test,harness]): a missing lm_eval fails here, it is not skipped."""

from __future__ import annotations

import lm_eval  # noqa: F401  (the extra must be installed where the tests run)

from evaluators import harness
from trainers.methods.qdylora import RankTruncatedLinear

TASK = "dyrank_countries"


def test_shipped_task_reads_its_data_from_any_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [spec] = harness.task_specs([TASK])
    data = spec["dataset_kwargs"]["data_files"]["test"]
    assert spec["dataset_path"] == "json" and data.startswith("/") and (harness.TASKS_DIR / "countries_mc.jsonl").samefile(data)
    assert harness.task_specs(["arc_easy"]) == ["arc_easy"], "the harness's own tasks pass through by name"


def test_metric_names_are_flat_mlflow_names():
    out = {"results": {TASK: {"alias": TASK, "acc,none": 0.25, "acc_stderr,none": 0.1, "sample_len": 41},
                       "gsm8k": {"exact_match,strict-match": 0.5}}}
    assert harness.flatten_results(out) == {"harness_dyrank_countries_acc": 0.25, "harness_gsm8k_exact_match_strict-match": 0.5}


def test_two_ranks_scored_on_one_base_load(tiny_run, monkeypatch):
    import trainers.models

    loads, seen = [], []
    load_base = trainers.models.load_base_model
    monkeypatch.setattr(trainers.models, "load_base_model", lambda *a, **k: loads.append(a) or load_base(*a, **k))
    load_adapter = harness.load_adapter

    def load_and_watch(*args):
        model, tokenizer, dynamic = load_adapter(*args)
        factor = next(m for m in model.modules() if isinstance(m, RankTruncatedLinear))
        factor.register_forward_hook(lambda mod, inp, out: seen.append(mod.active_rank))  # the rank each forward ran at
        return model, tokenizer, dynamic

    monkeypatch.setattr(harness, "load_adapter", load_and_watch)
    scores = harness.evaluate_adapter(tiny_run.adapter_dir, [1, 8], [TASK], tiny_run.cfg, limit=12, batch_size=16)

    assert len(loads) == 1, "the base loads once for every rank"
    assert set(scores) == {1, 8}
    for rank, row in scores.items():
        assert 0.0 <= row[f"harness_{TASK}_acc"] <= 1.0 and 0.0 <= row[f"harness_{TASK}_acc_norm"] <= 1.0, row
    assert seen and seen == sorted(seen) and set(seen) == {1, 8}, "rank 1's requests ran at rank 1, then rank 8's at 8"
