"""`dyrank` command line. Bad input ends in one line on stderr that names the field or file, exit 2."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from orchestrator.config import ConfigError, load_config
from orchestrator.errors import PipelineError, RayConnectError, TrackingError, UsageError

EXIT_BAD_INPUT = 2


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("config", nargs=None if required else "?", help="YAML config (see examples/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set training.lr=1e-4 (repeatable)")


def _add_tracking_uri(parser: argparse.ArgumentParser, what: str = "") -> None:
    parser.add_argument("--tracking-uri", help=f"MLflow store{what} (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")


def _add_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", help="Optuna storage (default: ./optuna.db)")


def _add_out(parser: argparse.ArgumentParser, default: str | None = None, default_text: str | None = None) -> None:
    """--out FOLDER: required where there is no default."""
    shown = default_text or (f"./{default}" if default else None)
    parser.add_argument("--out", default=default, required=default is None and default_text is None,
                        help="output folder" + (f" (default {shown})" if shown else ""))


def cmd_check(args) -> int:
    cfg = load_config(args.config, args.overrides)
    print(cfg.to_yaml(), end="")
    jobs = [f"{job.name} ({job.method})" for job in cfg.baseline_jobs()]
    print(f"# {args.config}: OK ({cfg.adapter.method}, ranks {cfg.eval_ranks()[0]}..{cfg.eval_ranks()[-1]})"
          + (f"; baseline jobs: {', '.join(jobs)}" if jobs else ""), file=sys.stderr)
    return 0


def cmd_plan(args) -> int:
    from orchestrator.plan import check_fits, format_plan, plan

    cfg = load_config(args.config, args.overrides)
    plans = plan(cfg)
    print(format_plan(plans))
    check_fits(cfg, plans)
    return 0


def cmd_train(args) -> int:
    from trainers.finetune import train

    if args.resume:
        out = Path(args.resume)
        if not (out / "config.yaml").is_file():
            raise UsageError(f"--resume {out}: not a dyrank train folder (no config.yaml)")
        if args.config or args.overrides:
            raise UsageError("--resume takes its config from the folder; drop CONFIG and --set")
        cfg = load_config(out / "config.yaml")
    else:
        if not args.config:
            raise UsageError("dyrank train needs CONFIG (or --resume DIR)")
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out or f"runs/{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}")
        if (out / "config.yaml").exists():
            raise UsageError(f"--out {out} already holds a training run; use --resume {out} or another --out")
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.to_yaml())
    result = train(cfg, out)
    print(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; adapter: {result.adapter_dir}")
    return 0


# One line per pipeline / study event, formatted from the event's payload; events not listed print nothing.
PIPELINE_EVENTS = {
    "started": "pipeline run {parent_run_id}  (MLflow: {tracking_uri})",
    "trained": "QDyLoRA trained in {device_seconds:.1f} s; sweeping ranks...",
    "eval": "  rank {rank:>3}: eval_loss {eval_loss:.4f}",
}
STUDY_EVENTS = {
    "study_started": "study {name}  (Optuna: {storage}; MLflow: {tracking_uri}, run {study_run_id})",
    "trial_requeued": "  trial {number} was interrupted: its parameters are re-enqueued",
    "trial_started": "  trial {number} started: {params}",
    "trial_done": "  trial {number} finished: {values} (pipeline run {run_id})",
    "trial_pruned": "  trial {number} pruned at step {step}",
    "trial_failed": "  trial {number} failed: {reason}",
}


def _event_printer(lines: dict[str, str]):
    def print_event(kind: str, payload: dict) -> None:
        if kind in lines:
            print(lines[kind].format(**payload), flush=True)
    return print_event


_print_event = _event_printer(PIPELINE_EVENTS)
_print_study_event = _event_printer(STUDY_EVENTS)


def _print_result(result) -> None:
    print()
    print(result.table)
    print(f"\nparent run: {result.parent_run_id}")


def cmd_run(args) -> int:
    from dashboards.summary import write_pipeline_outputs
    from orchestrator.pipeline import run_pipeline

    cfg = load_config(args.config, args.overrides)
    _print_result(run_pipeline(cfg, on_event=_print_event, write_outputs=write_pipeline_outputs))
    return 0


def cmd_resume(args) -> int:
    from dashboards.summary import write_pipeline_outputs
    from orchestrator.pipeline import resume_pipeline

    result = resume_pipeline(args.run_id, args.tracking_uri, on_event=_print_event, write_outputs=write_pipeline_outputs)
    if result is None:
        print(f"pipeline {args.run_id} already finished; nothing to do")
    else:
        _print_result(result)
    return 0


def cmd_study(args) -> int:
    import optuna

    from dashboards.summary import write_pipeline_outputs
    from orchestrator.study import run_study
    from orchestrator.study_config import load_study_config

    cfg = load_study_config(args.config, args.overrides)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver prints each trial itself
    try:
        result = run_study(cfg, on_event=_print_study_event, write_outputs=write_pipeline_outputs)
    except KeyboardInterrupt:
        print(f"\nstudy {cfg.name} interrupted; run the same command to resume it", file=sys.stderr)
        return 130
    print(f"\nstudy {result.name}: trials by state {result.states}")
    title = "best trial" if len(cfg.objectives) == 1 else f"Pareto front ({len(result.best)} trials)"
    print(f"{title} ({', '.join(o.metric for o in cfg.objectives)}):")
    for trial in result.best:
        print(f"  trial {trial.number}: {trial.values}  {trial.params}")
    print(f"study run: {result.study_run_id}")
    return 0


def cmd_report(args) -> int:
    from dashboards.report import write_report

    report = write_report(args.target, args.tracking_uri, args.storage, args.out)
    print(f"report: {report.html}")
    for png in report.pngs:
        print(f"  png: {png}")
    return 0


def cmd_ui(args) -> int:
    import time

    from dashboards.report import default_storage
    from dashboards.ui import start_ui
    from orchestrator.tracking import check_reachable, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(uri)
    servers = start_ui(uri, args.storage or default_storage(), args.mlflow_port, args.optuna_port)
    try:
        print(f"MLflow UI:        {servers.url('mlflow')}   ({uri})")
        print(f"optuna-dashboard: {servers.url('optuna-dashboard')}   ({args.storage or default_storage()})")
        print("Ctrl-C stops both.", flush=True)
        while all(s.process.poll() is None for s in servers.servers):
            time.sleep(1)
        gone = [s for s in servers.servers if s.process.poll() is not None]
        raise UsageError(f"{gone[0].name} exited with {gone[0].process.returncode}; see {gone[0].log}")
    except KeyboardInterrupt:
        print("stopped")
        return 0
    finally:
        servers.stop()


def _adapter_from_run(run_id: str, tracking_uri: str | None) -> Path:
    """The full adapter of a pipeline run (or of one of its child runs), downloaded from MLflow."""
    import tempfile

    from orchestrator.tracking import PARENT_TAG, open_run

    tracker, run = open_run(run_id, tracking_uri)
    parent = run.data.tags.get(PARENT_TAG, run_id)
    return tracker.download(parent, "adapter", tempfile.mkdtemp(prefix="dyrank-export-"))


def cmd_export(args) -> int:
    from orchestrator.adapter_card import export_card
    from trainers.methods.qdylora import export_rank
    from trainers.model_card import finish_export

    source = Path(args.source)
    if source.exists():
        adapter = source / "adapter" if (source / "adapter").is_dir() else source
    else:
        adapter = _adapter_from_run(args.source, args.tracking_uri)
    if not (adapter / "adapter_config.json").is_file():
        raise UsageError(f"{source}: no adapter found (expected a dyrank train folder, an adapter folder or a run id)")
    out = export_rank(adapter, args.rank, args.out)
    # Model card hook (issue 20); moves into trainers.export.export_adapter, the one export path, at merge.
    finish_export(out, args.rank, export_card(args.source, adapter, args.rank, out, args.tracking_uri))
    print(f"rank-{args.rank} PEFT adapter written to {out}")
    return 0


def cmd_models(args) -> int:
    from trainers import model_registry

    if args.action == "list":
        for model_id, spec in model_registry.REGISTERED_MODELS.items():
            cached = "cached" if model_registry.model_file(model_id).exists() else "not fetched"
            print(f"{model_id:<24} {spec.requirement:<22} {spec.license:<12} {cached}")
        return 0
    if not args.model_id:
        raise UsageError("dyrank models fetch needs a model id; see dyrank models list")
    from trainers.models import resolve_base

    model_registry.get_spec(args.model_id)  # an unknown id is an error that lists the known ones
    folder = resolve_base(args.model_id)  # fetch (sha256-checked) and dequantize once into the cache
    print(f"{args.model_id}: {model_registry.model_file(args.model_id)}\n  ready to load from {folder}")
    return 0


def cmd_data(args) -> int:
    import json

    from trainers.datasets import build, read_manifest

    options = {"max_records": args.max_records} if args.max_records is not None else {}
    out = build(args.name, args.out, force=args.force, **options)
    print(json.dumps(read_manifest(out), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dyrank", description="QDyLoRA rank search: train once, evaluate every rank.")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, func, summary in (  # the commands that take a config and nothing else
        ("check", cmd_check, "validate a config and print it resolved"),
        ("plan", cmd_plan, "estimate each actor's peak memory (nothing loaded); refuse what cannot fit"),
        ("run", cmd_run, "the whole pipeline on Ray: train, baselines, every rank evaluated, MLflow"),
        ("study", cmd_study, "an Optuna study whose trials are whole pipelines; run it again to resume"),
    ):
        p = sub.add_parser(name, help=summary)
        _add_config_args(p)
        p.set_defaults(func=func)

    p = sub.add_parser("train", help="one training run, locally (no Ray)")
    _add_config_args(p, required=False)
    _add_out(p, default_text="runs/NAME-TIMESTAMP")
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("report", help="a self-contained HTML report (and PNGs) of a pipeline run or a study")
    p.add_argument("target", help="a pipeline run id, a study run id, or a study name")
    _add_tracking_uri(p, " (for a study: the one its driver recorded)")
    _add_storage(p)
    _add_out(p, default="reports")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ui", help="the MLflow UI and optuna-dashboard on 127.0.0.1; Ctrl-C stops both")
    _add_tracking_uri(p)
    _add_storage(p)
    p.add_argument("--mlflow-port", type=int, default=5000, help="default 5000, or a free one if taken")
    p.add_argument("--optuna-port", type=int, default=8080, help="default 8080, or a free one if taken")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("resume", help="finish an interrupted pipeline; nothing is redone or recorded twice")
    p.add_argument("run_id", help="the pipeline's MLflow parent run id")
    _add_tracking_uri(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("models", help="registered models: list them, or fetch one into the cache")
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("model_id", nargs="?", help="e.g. smollm2-135m-instruct")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="build an offline data set into train/validation/test JSONL in the cache")
    p.add_argument("action", choices=["build"])
    p.add_argument("name", help="countries or wordnet")
    _add_out(p, default_text="the cache")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    p.add_argument("--max-records", type=int, help="wordnet: cap on records (0: all)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("export", help="write a standard PEFT adapter for one rank")
    p.add_argument("source", help="a dyrank train folder, or an MLflow pipeline run id")
    _add_tracking_uri(p, ", when SOURCE is a run id")
    p.add_argument("--rank", type=int, required=True)
    _add_out(p)
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, UsageError, PipelineError, RayConnectError, TrackingError, FileNotFoundError, ValueError) as exc:
        print(f"dyrank {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
