"""`dyrank` command line. Bad input ends in one line on stderr that names the field or file, exit 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.cli_jobs import cmd_resume, cmd_run, cmd_study, cmd_train
from orchestrator.cli_tools import (cmd_cache, cmd_check, cmd_data, cmd_env, cmd_export, cmd_harness, cmd_models,
                                    cmd_plan, cmd_report, cmd_ui)
from orchestrator.config import ConfigError
from orchestrator.errors import PipelineError, RayConnectError, TrackingError, UsageError
from orchestrator.redact import redact

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
