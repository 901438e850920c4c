"""The `dyrank` commands around runs: `check` and `plan` a config, `report`, `ui`, `export` and `harness` a
finished run, `models`, `data`, `cache` and `env`. The parser and the error boundary are in orchestrator/cli.py."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.config import load_config
from orchestrator.errors import UsageError
from orchestrator.redact import redact


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

