"""`dyrank` command line. Bad input ends in one line on stderr that names the field or file, exit 2."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from orchestrator.config import ConfigError, load_config
from orchestrator.errors import PipelineError, RayConnectError, TrackingError, UsageError

EXIT_BAD_INPUT = 2


class _BareOverrides(argparse.Action):
    """KEY=VALUE words after the config path (as LLaMA-Factory and torchtune take them), joined to --set's."""

    def __call__(self, parser, namespace, values, option_string=None):
        for value in values:
            if "=" not in value:
                parser.error(f"unexpected argument {value!r}: overrides are KEY=VALUE, e.g. training.lr=1e-4")
        namespace.overrides = [*(getattr(namespace, "overrides", None) or []), *values]


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("config", nargs=None if required else "?", help="YAML config (see examples/)")
    parser.add_argument("bare_overrides", nargs="*", action=_BareOverrides, metavar="KEY=VALUE",
                        help="override a config field, e.g. training.lr=1e-4 (same as --set)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set training.lr=1e-4 (repeatable)")


def _add_progress_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-rank lines; only the result table")
    parser.add_argument("--log-file", type=Path, metavar="PATH",
                        help="append progress as plain timestamped lines to PATH (steps, loss, ETA, ranks scored)")


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


_print_study_event = _event_printer(STUDY_EVENTS)


def _print_result(result) -> None:
    print()
    print(result.table)
    print(f"\nparent run: {result.parent_run_id}")


def _run_progress(args, num_ranks: int | None):
    """Live bars on stderr (training steps, loss, ETA; then ranks scored), unless --quiet; --log-file gets it as text."""
    from orchestrator.run_progress import RunProgress

    return RunProgress(num_ranks, PIPELINE_EVENTS, log_file=args.log_file, quiet=args.quiet)


def cmd_run(args) -> int:
    from dashboards.summary import write_pipeline_outputs
    from orchestrator.pipeline import run_pipeline

    cfg = load_config(args.config, args.overrides)
    progress = _run_progress(args, len(cfg.eval_ranks()))
    try:
        result = run_pipeline(cfg, on_event=progress.on_event, write_outputs=write_pipeline_outputs, progress=progress)
    finally:
        progress.close()
    _print_result(result)
    return 0


def cmd_resume(args) -> int:
    from dashboards.summary import write_pipeline_outputs
    from orchestrator.pipeline import resume_pipeline

    progress = _run_progress(args, None)  # the sweep's size is in the run's recorded config: the bar counts up
    try:
        result = resume_pipeline(args.run_id, args.tracking_uri, on_event=progress.on_event,
                                 write_outputs=write_pipeline_outputs, progress=progress)
    finally:
        progress.close()
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
    from trainers.methods.qdylora import export_rank

    source = Path(args.source)
    if source.exists():
        adapter = source / "adapter" if (source / "adapter").is_dir() else source
    else:
        adapter = _adapter_from_run(args.source, args.tracking_uri)
    if not (adapter / "adapter_config.json").is_file():
        raise UsageError(f"{source}: no adapter found (expected a dyrank train folder, an adapter folder or a run id)")
    out = export_rank(adapter, args.rank, args.out)
    print(f"rank-{args.rank} PEFT adapter written to {out}")
    return 0


def _harness_source(source: str, tracking_uri: str | None) -> tuple[Path, object]:
    """(adapter folder, its JobConfig or None) from a train folder, an adapter folder or a pipeline run id."""
    import tempfile

    import yaml

    from orchestrator.config import parse_config
    from orchestrator.tracking import PARENT_TAG, open_run

    path = Path(source)
    if path.exists():
        adapter = path / "adapter" if (path / "adapter").is_dir() else path
        config = path / "config.yaml"
        job = load_config(config).job() if config.is_file() else None
    else:
        adapter = _adapter_from_run(source, tracking_uri)
        tracker, run = open_run(source, tracking_uri)
        text = Path(tracker.download(run.data.tags.get(PARENT_TAG, source), "config.yaml", tempfile.mkdtemp())).read_text()
        job = parse_config(yaml.safe_load(text), f"config.yaml of run {source}").job()
    if not (adapter / "adapter_config.json").is_file():
        raise UsageError(f"{source}: no adapter found (expected a dyrank train folder, an adapter folder or a run id)")
    return adapter, job


def cmd_harness(args) -> int:
    from evaluators import harness

    harness.require()
    unknown = [t for t in args.tasks if t.startswith("dyrank_") and t not in harness.local_tasks()]
    if unknown:
        raise UsageError(f"--tasks: no shipped task {unknown[0]!r}; shipped: {', '.join(harness.local_tasks())}")
    adapter, job = _harness_source(args.source, args.tracking_uri)
    from trainers.methods.qdylora import exportable_ranks

    ranks = exportable_ranks(adapter)
    if args.rank != ["all"] and not all(r.isdigit() for r in args.rank):
        raise UsageError(f"--rank takes rank numbers or all, not {' '.join(args.rank)}")
    wanted = list(ranks) if args.rank == ["all"] else [int(r) for r in args.rank]
    outside = [r for r in wanted if r not in ranks]
    if outside:
        raise UsageError(f"--rank {outside[0]}: {adapter} serves ranks {ranks.start}..{ranks.stop - 1}")
    scores = harness.evaluate_adapter(adapter, wanted, args.tasks, job, args.limit, args.batch_size)
    names = sorted({name for row in scores.values() for name in row})
    print("rank  " + "  ".join(names))
    for rank, row in scores.items():
        print(f"{rank:>4}  " + "  ".join(f"{row.get(n, float('nan')):>{len(n)}.4f}" for n in names))
    if args.out:
        harness.write_scores(scores, Path(args.out))
        print(f"scores written to {args.out}")
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


def cmd_env(args) -> int:
    from orchestrator.env_report import env_report, format_report

    sections = env_report(args.tracking_uri, args.ray_address)
    print(format_report(sections))
    unreachable = [name for _, rows in sections for name, value in rows if value.startswith("UNREACHABLE")]
    return 1 if unreachable else 0


def build_parser() -> argparse.ArgumentParser:
    from orchestrator.env_report import dyrank_version

    parser = argparse.ArgumentParser(prog="dyrank", description="QDyLoRA rank search: train once, evaluate every rank.")
    parser.add_argument("--version", action="version", version=f"dyrank {dyrank_version()}")
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
        if name == "run":
            _add_progress_args(p)

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
    _add_progress_args(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("models", help="registered models: list them, or fetch one into the cache")
    p.add_argument("action", choices=["list", "fetch"], help="list: registered models; fetch: download one into the cache")
    p.add_argument("model_id", nargs="?", help="e.g. smollm2-135m-instruct")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="build an offline data set into train/validation/test JSONL in the cache")
    p.add_argument("action", choices=["build"], help="build: write train/validation/test JSONL and a manifest")
    p.add_argument("name", help="countries or wordnet")
    _add_out(p, default_text="the cache")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    p.add_argument("--max-records", type=int, help="wordnet: cap on records (0: all)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("export", help="write a standard PEFT adapter for one rank")
    p.add_argument("source", help="a dyrank train folder, or an MLflow pipeline run id")
    _add_tracking_uri(p, ", when SOURCE is a run id")
    p.add_argument("--rank", type=int, required=True, help="the rank to export (within the adapter's r_min..r_max)")
    _add_out(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("harness", help="score ranks of an adapter with lm-evaluation-harness, the base loaded once",
                       description="Score one or several ranks of a trained adapter with lm-evaluation-harness "
                       "(needs the extra dyrank[harness]). The base loads once; ranks switch in place. Shipped "
                       "offline task: dyrank_countries; any harness task name works where its data can be reached.")
    p.add_argument("source", metavar="RUN_OR_DIR", help="a dyrank train folder, an adapter folder, or a pipeline run id")
    p.add_argument("--rank", nargs="+", required=True, metavar="R", help="ranks to score, e.g. --rank 2 8, or all")
    p.add_argument("--tasks", nargs="+", required=True, metavar="TASK", help="harness task names, e.g. dyrank_countries")
    p.add_argument("--limit", type=int, help="at most this many examples per task (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="harness requests per forward batch (default 8)")
    p.add_argument("--out", help="also write the scores as JSON to this file")
    _add_tracking_uri(p, ", when RUN_OR_DIR is a run id")
    p.set_defaults(func=cmd_harness)

    p = sub.add_parser("env", help="versions, devices, and whether Ray and the tracking store can be reached",
                       description="Print dyrank's and its libraries' versions, the compute devices, and probe the Ray "
                       "cluster (if one is named) and the MLflow store; exits 1 when one cannot be reached.")
    _add_tracking_uri(p)
    p.add_argument("--ray-address", help="a Ray cluster to probe (default: RAY_ADDRESS; none: a private local Ray)")
    p.set_defaults(func=cmd_env)
    _describe_subcommands(sub)
    return parser


def _describe_subcommands(sub) -> None:
    """`dyrank CMD --help` opens with the command's one-line summary where it has no longer description."""
    summaries = {action.dest: action.help for action in sub._choices_actions}
    for name, parser in sub.choices.items():
        parser.description = parser.description or summaries[name][0].upper() + summaries[name][1:] + "."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse, plus bare KEY=VALUE overrides that come after an option (`CONFIG --set a=1 b=2`), which
    argparse alone would reject once the positionals were consumed."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in word and not word.startswith("-") for word in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, UsageError, PipelineError, RayConnectError, TrackingError, FileNotFoundError, ValueError) as exc:
        print(f"dyrank {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
