"""The `dyrank` commands that train: `train` (one run, no Ray), `run` and `resume` (the pipeline on Ray) and
`study` (Optuna trials that are whole pipelines), with their progress lines and Ctrl-C handling. The parser and
the error boundary are in orchestrator/cli.py."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from orchestrator.config import load_config
from orchestrator.errors import UsageError
from orchestrator.redact import redact
from trainers.atomic import write_atomic

EXIT_INTERRUPTED = 130  # what a shell reports for Ctrl-C


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
        return EXIT_INTERRUPTED
    print(f"\nstudy {result.name}: trials by state {result.states}")
    title = "best trial" if len(cfg.objectives) == 1 else f"Pareto front ({len(result.best)} trials)"
    print(f"{title} ({', '.join(o.metric for o in cfg.objectives)}):")
    for trial in result.best:
        print(f"  trial {trial.number}: {trial.values}  {trial.params}")
    print(f"study run: {result.study_run_id}")
    return 0

