"""lm-evaluation-harness at any rank of a dynamic adapter, the base loaded once.

`DyrankLM` is lm_eval's HFLM around a model that is already loaded (a PeftModel made rank-switchable), registered
in-process as model "dyrank": each `simple_evaluate` call scores whatever rank is active, so `score_ranks` switches
the rank between calls instead of reloading anything. Metrics come back flat, `harness_<task>_<metric>`, as MLflow
metric names. Needs the optional extra: pip install 'dyrank[harness]'.

Our own tasks live in evaluators/harness_tasks/ (harness YAML; their `data_files` are relative to that folder and
resolved here, so they work from any working directory, offline).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import re
from pathlib import Path

import yaml

TASKS_DIR = Path(__file__).resolve().parent / "harness_tasks"
EXTRA_HINT = "lm-evaluation-harness is not installed: pip install 'dyrank[harness]'"


def available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def require() -> None:
    if not available():
        raise ValueError(EXTRA_HINT)


@functools.cache
def local_tasks() -> dict[str, dict]:
    """Our shipped tasks by name, their data files made absolute (the harness would read them from the cwd)."""
    tasks = {}
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        files = config.get("dataset_kwargs", {}).get("data_files", {})
        config["dataset_kwargs"]["data_files"] = {split: str(TASKS_DIR / name) for split, name in files.items()}
        tasks[config["task"]] = config
    return tasks


@functools.cache
def _task_manager(with_defaults: bool):
    from lm_eval.tasks import TaskManager

    # Indexing the harness's own ~10k task files takes seconds: skipped when only our tasks are asked for.
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=with_defaults)


def task_specs(tasks: list[str]) -> list:
    """What simple_evaluate gets: our tasks as whole config dicts with absolute data files (a dict spec is an
    inline task to the harness), any other name as is."""
    ours = local_tasks()
    return [dict(ours[name]) if name in ours else name for name in tasks]


def metric_name(task: str, key: str) -> str:
    """("dyrank_countries", "acc,none") -> "harness_dyrank_countries_acc"; a filter other than none is kept."""
    metric, _, filt = key.partition(",")
    name = f"harness_{task}_{metric}" + (f"_{filt}" if filt and filt != "none" else "")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def flatten_results(results: dict) -> dict[str, float]:
    """simple_evaluate's {"results": {task: {"acc,none": x, "acc_stderr,none": s, "alias": ...}}} -> flat metrics."""
    flat = {}
    for task, row in results["results"].items():
        for key, value in row.items():
            if "," in key and "_stderr" not in key and isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[metric_name(task, key)] = float(value)
    return flat


def make_lm(model, tokenizer, batch_size: int = 8, max_length: int | None = None):
    """The registered dyrank LM around a loaded model (nothing is loaded here)."""
    from evaluators.harness_lm import DyrankLM

    return DyrankLM(model, tokenizer, batch_size=batch_size, max_length=max_length)


def score_ranks(lm, ranks: list[int | None], tasks: list[str], limit: int | None = None,
                set_rank=None) -> dict[int | None, dict[str, float]]:
    """Every rank scored on every task with one loaded model: `set_rank(rank)` switches it in place between
    runs (rank None: the caller has put the base alone in place)."""
    require()
    from lm_eval import simple_evaluate

    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # the harness logs every request batch at INFO
    manager = _task_manager(with_defaults=any(t not in local_tasks() for t in tasks))
    scores = {}
    for rank in ranks:
        if set_rank is not None:
            set_rank(rank)
        out = simple_evaluate(model=lm, tasks=task_specs(tasks), task_manager=manager, limit=limit,
                              log_samples=False, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                              torch_random_seed=0, fewshot_random_seed=0)
        scores[rank] = flatten_results(out)
    return scores


def session_scores(session, rank: int | None, tasks: list[str], limit: int | None = None, batch_size: int = 8) -> dict:
    """One rank of an evaluators.session.EvalSession (its base already loaded, an adapter attached)."""
    from trainers.methods.qdylora import set_active_rank

    def set_rank(r):
        if r is not None and session.dynamic:
            set_active_rank(session.model, r, scale_rank=session.scale_rank)

    lm = make_lm(session.model, session.tokenizer, batch_size)
    return score_ranks(lm, [rank], tasks, limit, set_rank)[rank]


def load_adapter(adapter_dir: Path, job=None):
    """(model, tokenizer, dynamic): the base loaded once and the adapter on it, made rank-switchable if dynamic.
    With a dyrank JobConfig the base loads as training/evaluation did (NF4, dequantized once); without one (an
    adapter saved by the Trainer callback) it loads from the adapter's base_model_name_or_path, unquantized."""
    from peft import LoraConfig, PeftModel

    from trainers.methods.base import read_adapter_meta
    from trainers.methods.qdylora import attach_dynamic_rank
    from trainers.models import (base_dtype, dequantize_once, load_base_model, load_tokenizer, quant_settings,
                                 resolve_base)

    if job is not None:
        base_path = resolve_base(job.model.source)
        base = load_base_model(base_path, quant_settings(job), base_dtype(job), trust_remote_code=job.model.trust_remote_code)
        if job.evaluation.dequantize_base:
            base = dequantize_once(base, job.quantization.compute_dtype)
    else:
        base_path = resolve_base(LoraConfig.from_pretrained(adapter_dir).base_model_name_or_path)
        base = load_base_model(base_path)
    model = PeftModel.from_pretrained(base.eval(), str(adapter_dir), is_trainable=False).eval()
    meta = read_adapter_meta(adapter_dir) or {}
    if meta.get("dynamic"):
        attach_dynamic_rank(model)
    tokenizer = load_tokenizer(base_path, job.model.trust_remote_code if job is not None else False)
    return model, tokenizer, bool(meta.get("dynamic"))


def evaluate_adapter(adapter_dir: Path, ranks: list[int], tasks: list[str], job=None, limit: int | None = None,
                     batch_size: int = 8) -> dict[int, dict[str, float]]:
    """`dyrank harness`: every rank of one adapter on the harness tasks, the base loaded once."""
    require()
    from trainers.methods.qdylora import set_active_rank

    model, tokenizer, dynamic = load_adapter(Path(adapter_dir), job)
    if not dynamic and len(set(ranks)) > 1:
        raise ValueError(f"{adapter_dir} is a fixed-rank adapter: it has one rank, not {sorted(set(ranks))}")
    lm = make_lm(model, tokenizer, batch_size)
    return score_ranks(lm, ranks, tasks, limit, set_rank=(lambda r: set_active_rank(model, r)) if dynamic else None)


def write_scores(scores: dict, path: Path) -> None:
    path.write_text(json.dumps({str(k): v for k, v in scores.items()}, indent=2) + "\n")
