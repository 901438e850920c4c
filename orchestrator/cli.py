"""`dyrank` command line. Bad input ends in one line on stderr that names the field or file, exit 2."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from orchestrator.config import ConfigError, load_config
from orchestrator.errors import PipelineError, RayConnectError, TrackingError, UsageError
from orchestrator.redact import redact
from trainers.atomic import write_atomic

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # what a shell reports for Ctrl-C


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


def _add_out(parser: argparse.ArgumentParser, default: str | None = None, default_text: str | None = None,
             force: str | None = "replace a non-empty --out folder") -> None:
    """--out FOLDER: required where there is no default; a non-empty folder is refused unless --force
    (trainers/out_dir.py: the rule every command that writes a folder follows)."""
    shown = default_text or (f"./{default}" if default else None)
    parser.add_argument("--out", default=None, required=default is None and default_text is None,
                        help="output folder" + (f" (default {shown})" if shown else ""))
    if force:
        parser.add_argument("--force", action="store_true", help=force)


def _port(text: str) -> int:
    """A TCP port for --mlflow-port / --optuna-port: 0 (any free port) to 65535; argparse names the flag."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0..65535 (0: any free port)")
    return port


def cmd_check(args) -> int:
    from trainers.datasets.splits import load_splits
    from trainers.model_sources import check_available

    cfg = load_config(args.config, args.overrides)
    # Beyond the schema: the data loads (every record checked, every split non-empty) and the model is there;
    # nothing is downloaded or built.
    splits = load_splits(cfg.data, build=False)
    check_available(cfg.model.source)
    print(redact(cfg.to_yaml()), end="")
    jobs = [f"{job.name} ({job.method})" for job in cfg.baseline_jobs()]
    print(f"# {args.config}: OK ({cfg.adapter.method}, ranks {cfg.eval_ranks()[0]}..{cfg.eval_ranks()[-1]})"
          + (f"; baseline jobs: {', '.join(jobs)}" if jobs else "")
          + "; data: " + ", ".join(f"{name} {len(records)}" for name, records in splits.items()), file=sys.stderr)
    return 0


def cmd_plan(args) -> int:
    from orchestrator.plan import check_fits, format_plan, plan

    cfg = load_config(args.config, args.overrides)
    plans = plan(cfg)
    print(format_plan(plans))
    check_fits(cfg, plans)
    return 0


def cmd_train(args) -> int:
    from trainers.finetune import CHECKPOINT_DIR, METRICS_FILE, train
    from trainers.out_dir import check_out_dir, removed_on_failure

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
        out = check_out_dir(out, force=args.force)
    # A run that fails during set-up (before its first step is recorded) leaves no folder behind.
    try:
        with removed_on_failure(out, keep=lambda path: (path / CHECKPOINT_DIR).is_dir() or (path / METRICS_FILE).exists()):
            if not args.resume:
                write_atomic(out / "config.yaml", redact(cfg.to_yaml()))
            result = train(cfg, out)
    except KeyboardInterrupt:  # checkpoints and the metrics log are consistent on disk: say how to go on
        hint = f"continue with: dyrank train --resume {out}" if out.exists() else "nothing was trained yet"
        print(f"\ndyrank train: interrupted; {hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
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


INTERRUPTED = object()


def _interruptible(command: str, run, on_event):
    """run(on_event), with Ctrl-C turned into one line naming the run (marked KILLED by the pipeline) and how
    to resume it, and INTERRUPTED returned (exit 130, no traceback)."""
    started: dict = {}

    def seen(kind: str, payload: dict) -> None:
        if kind == "started":
            started.update(payload)
        on_event(kind, payload)
    try:
        return run(seen)
    except KeyboardInterrupt:
        run_id = started.get("parent_run_id")
        where = (f"pipeline run {run_id} marked KILLED; continue with: dyrank resume {run_id}" if run_id
                 else "nothing was started")
        print(f"\ndyrank {command}: interrupted; {where}", file=sys.stderr)
        return INTERRUPTED


def cmd_run(args) -> int:
    from dashboards.summary import write_pipeline_outputs
    from orchestrator.pipeline import run_pipeline

    cfg = load_config(args.config, args.overrides)
    progress = _run_progress(args, len(cfg.eval_ranks()))
    try:
        result = _interruptible("run", lambda on_event: run_pipeline(
            cfg, on_event=on_event, write_outputs=write_pipeline_outputs, progress=progress), progress.on_event)
    finally:
        progress.close()
    if result is INTERRUPTED:
        return EXIT_INTERRUPTED
    _print_result(result)
    return 0


def cmd_resume(args) -> int:
    from dashboards.summary import write_pipeline_outputs
    from orchestrator.pipeline import resume_pipeline

    progress = _run_progress(args, None)  # the sweep's size is in the run's recorded config: the bar counts up
    try:
        result = _interruptible("resume", lambda on_event: resume_pipeline(
            args.run_id, args.tracking_uri, on_event=on_event, write_outputs=write_pipeline_outputs,
            allow_remote_code=args.allow_remote_code, progress=progress), progress.on_event)
    finally:
        progress.close()
    if result is INTERRUPTED:
        return EXIT_INTERRUPTED
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
    from trainers.out_dir import check_out_dir

    out = check_out_dir(args.out, force=args.force) if args.out else "reports"  # ./reports collects every report
    report = write_report(args.target, args.tracking_uri, args.storage, out)
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
        print(f"MLflow UI:        {servers.url('mlflow')}   ({redact(uri)})")
        print(f"optuna-dashboard: {servers.url('optuna-dashboard')}   ({redact(args.storage or default_storage())})")
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


def _adapter_from_run(run_id: str, tracking_uri: str | None, into: str) -> Path:
    """The full adapter of a pipeline run (or of one of its child runs), downloaded from MLflow into `into`."""
    from orchestrator.tracking import PARENT_TAG, RUN_ID, open_run

    if not RUN_ID.fullmatch(run_id):
        raise UsageError(f"{run_id}: no such folder, and not an MLflow run id (32 hex digits)")
    tracker, run = open_run(run_id, tracking_uri)
    parent = run.data.tags.get(PARENT_TAG, run_id)
    return tracker.download(parent, "adapter", into)


def cmd_export(args) -> int:
    import tempfile

    from orchestrator.adapter_card import export_card
    from trainers.export import export_adapter
    from trainers.out_dir import check_out_dir

    def card(adapter, folder, name):  # the run's (or train folder's) facts on the exported adapter's card
        return export_card(args.source, adapter, args.rank, folder, args.tracking_uri, out_name=name)

    if Path(args.source).exists():
        out = export_adapter(args.source, args.rank, args.out, force=args.force, card=card)
    else:
        check_out_dir(args.out, force=args.force)  # before anything is downloaded
        with tempfile.TemporaryDirectory(prefix="dyrank-export-") as into:
            out = export_adapter(_adapter_from_run(args.source, args.tracking_uri, into), args.rank, args.out,
                                 force=args.force, card=card)
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

    from trainers.datasets import build, get_dataset, read_manifest
    from trainers.out_dir import check_out_dir

    get_dataset(args.name)  # an unknown name lists the known ones
    if args.max_records is not None and args.max_records < 0:
        raise UsageError(f"--max-records {args.max_records}: must be 0 (all) or more")
    def earlier_build(path: Path) -> bool:
        manifest = read_manifest(path)
        return isinstance(manifest, dict) and manifest.get("name") == args.name

    if args.out:  # a non-empty folder only if it holds an earlier build of this data set (or with --force)
        check_out_dir(args.out, force=args.force, reusable=earlier_build)
    options = {"max_records": args.max_records} if args.max_records is not None else {}
    out = build(args.name, args.out, force=args.force, **options)
    print(json.dumps(read_manifest(out), indent=2))
    return 0


def cmd_cache(args) -> int:
    from orchestrator.cache import cache_listing, human_bytes, prune

    if args.action == "list":
        print(cache_listing())
        return 0
    removed, freed = prune(adapters=args.adapters)
    for path in removed:
        print(f"removed {path}")
    print(f"freed {human_bytes(freed)}; pipelines that may still be resumed were not touched")
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
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also accepted after the command)")
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
    _add_out(p, default_text="runs/NAME-TIMESTAMP", force="train into a non-empty --out folder")
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("report", help="a self-contained HTML report (and PNGs) of a pipeline run or a study")
    p.add_argument("target", help="a pipeline run id, a study run id, or a study name")
    _add_tracking_uri(p, " (for a study: the one its driver recorded)")
    _add_storage(p)
    _add_out(p, default="reports", force="write into a non-empty --out folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ui", help="the MLflow UI and optuna-dashboard on 127.0.0.1; Ctrl-C stops both")
    _add_tracking_uri(p)
    _add_storage(p)
    p.add_argument("--mlflow-port", type=_port, default=5000, help="default 5000, or a free one if taken; 0: any free port")
    p.add_argument("--optuna-port", type=_port, default=8080, help="default 8080, or a free one if taken; 0: any free port")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("resume", help="finish an interrupted pipeline; nothing is redone or recorded twice")
    p.add_argument("run_id", help="the pipeline's MLflow parent run id")
    _add_tracking_uri(p)
    p.add_argument("--allow-remote-code", action="store_true",
                   help="accept model.trust_remote_code: true in the config read back from MLflow")
    _add_progress_args(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("models", help="registered models: list them, or fetch one into the cache")
    p.add_argument("action", choices=["list", "fetch"], help="list: registered models; fetch: download one into the cache")
    p.add_argument("model_id", nargs="?", help="e.g. smollm2-135m-instruct")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="build an offline data set into train/validation/test JSONL in the cache")
    p.add_argument("action", choices=["build"], help="build: write train/validation/test JSONL and a manifest")
    p.add_argument("name", help="countries or wordnet")
    _add_out(p, default_text="the cache", force=None)
    p.add_argument("--force", action="store_true", help="rebuild even if up to date; build into a non-empty --out")
    p.add_argument("--max-records", type=int, help="wordnet: cap on records (0: all)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("cache", help="list the cache's sizes, or prune finished pipelines' intermediate files")
    p.add_argument("action", choices=["list", "prune"], help="list: sizes per area and pipeline; prune: free finished pipelines")
    p.add_argument("--adapters", action="store_true",
                   help="prune: remove finished pipelines' folders whole, adapters too (they are in MLflow)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("export", help="write a standard PEFT adapter for one rank")
    p.add_argument("source", help="a dyrank train folder, or an MLflow pipeline run id")
    _add_tracking_uri(p, ", when SOURCE is a run id")
    p.add_argument("--rank", type=int, required=True, help="the rank to export (within the adapter's r_min..r_max)")
    _add_out(p, force="replace a non-empty --out folder (never the source itself)")
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


EXPECTED_ERRORS = (ConfigError, UsageError, PipelineError, RayConnectError, TrackingError, ValueError)


def error_message(exc: BaseException) -> str:
    """The one line (or one validation list) the user sees: expected errors as they are worded; an OSError as
    its file and reason; anything else as its type and first line, with a pointer to --debug."""
    if isinstance(exc, EXPECTED_ERRORS):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        both = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
        return f"{both}: {exc.strerror or exc}"
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"unexpected {type(exc).__name__}: {first} (run with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line: dyrank --debug check X, dyrank check X --debug
    args = parse_args([a for a in argv if a != "--debug"])
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: one line, exit 2, no traceback unless --debug
        if debug:
            raise
        print(f"dyrank {args.command}: error: {redact(error_message(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
