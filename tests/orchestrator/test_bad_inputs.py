"""Bad input, as a careless user or an attacker gives it, through the CLI's `main([...])` in-process: every row ends
in exit 2 with one message naming the field or file, no traceback, and leaves no file behind that it did not
have before. Each class of input has at least three rows; `BAD_INPUTS` is the table (issue 14).

Commands that would start Ray, servers or downloads once validation passes are replaced by a stand-in that
records that validation let the input through (a row that reaches it is "silently accepted").
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from orchestrator.cli import main
from tests.support.fake_adapter import write_adapter

GOOD = {
    "name": "bad-input",
    "model": {"source": "tiny-llama"},
    "adapter": {"method": "qdylora", "r_min": 1, "r_max": 4},
    "data": {"dataset": "tiny-qa", "max_seq_len": 32},
    "training": {"max_steps": 2, "batch_size": 2, "checkpoint_every": 5},
    "evaluation": {"batch_size": 4, "max_samples": 4},
    "baselines": {"ranks": [2]},
}
RECORD = {"prompt": "2+2=", "completion": "4"}
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n" for a, b in zip("abcdefgh", "bcdefghi"))

BOMB_FLOW = "{" + ", ".join(BOMB.strip().splitlines()) + "}"  # the same bomb on one line, for --set


class Reached(Exception):
    """Raised by the stand-ins for Ray, servers and downloads: the command got past validation."""


@dataclass
class Row:
    id: str
    kind: str
    argv: Callable[[Path], list[str]]  # given the row's (empty, current) folder
    expect: tuple[str, ...]  # fragments the one message must hold (the field or file at fault)
    env: dict = field(default_factory=dict)


def config(tmp: Path, changes: dict | None = None, text: str | None = None, name: str = "config.yaml") -> str:
    """GOOD with dotted `changes` applied (None drops a key), or `text` as written, saved under tmp."""
    raw = json.loads(json.dumps(GOOD))
    for dotted, value in (changes or {}).items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = tmp / name
    path.write_text(text if text is not None else yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def check(changes: dict | None = None, text: str | None = None) -> Callable[[Path], list[str]]:
    return lambda tmp: ["check", config(tmp, changes, text)]


def check_yaml(yaml_text: str) -> Callable[[Path], list[str]]:
    """The good config with `yaml_text` appended (e.g. a repeated section)."""
    return lambda tmp: ["check", config(tmp, text=yaml.safe_dump(GOOD, sort_keys=False) + yaml_text)]


def records(*lines, raw: bytes | None = None, changes: dict | None = None) -> Callable[[Path], list[str]]:
    """`dyrank check` on a train_file of good records plus `lines` (a str is written as is, else as JSON)."""
    def argv(tmp: Path) -> list[str]:
        data = tmp / "train.jsonl"
        good = [json.dumps({"prompt": f"{i}+{i}=", "completion": str(2 * i)}) for i in range(40)]
        body = "\n".join(good + [line if isinstance(line, str) else json.dumps(line) for line in lines]) + "\n"
        data.write_bytes(body.encode() + (raw or b""))
        return ["check", config(tmp, {"data.dataset": None, "data.train_file": str(data), **(changes or {})})]
    return argv


def study(space: dict | None = None, **fields) -> Callable[[Path], list[str]]:
    def argv(tmp: Path) -> list[str]:
        raw = {"name": "bad-study", "pipeline": GOOD, "n_trials": 1, "parallel": 1,
               "search_space": space or {"training.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}, **fields}
        path = tmp / "study.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return ["study", str(path)]
    return argv


def adapter_folder(tmp: Path, broken: dict[str, bytes] | None = None) -> Path:
    """A train folder (run/) holding a rank-4 QDyLoRA adapter, with `broken` files written over."""
    write_adapter(tmp / "run" / "adapter", broken=broken)
    return tmp / "run"


def export(broken: dict[str, bytes] | None = None, out: str = "out", rank: int = 2, extra=()) -> Callable:
    def argv(tmp: Path) -> list[str]:
        source = adapter_folder(tmp, broken)
        (tmp / "full").mkdir()
        (tmp / "full" / "keep.txt").write_text("mine")
        (tmp / "afile").write_text("a file")
        return ["export", str(source), "--rank", str(rank), "--out", out.replace("{src}", str(source)), *extra]
    return argv


def train_with(changes: dict | None = None, out: str | None = None, before: Callable[[Path], None] = lambda t: None):
    def argv(tmp: Path) -> list[str]:
        before(tmp)
        return ["train", config(tmp, changes), *(["--out", out] if out else [])]
    return argv


def _fifo(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "config.yaml")
    return ["check", str(tmp / "config.yaml")]


def _resume_broken_summary(tmp: Path) -> list[str]:
    (tmp / "runs" / "x").mkdir(parents=True)
    (tmp / "runs" / "x" / "config.yaml").write_text(yaml.safe_dump(GOOD))
    (tmp / "runs" / "x" / "train_summary.json").write_text('{"steps": 2, "final_lo')
    return ["train", "--resume", str(tmp / "runs" / "x")]


def _resume_damaged_checkpoint(tmp: Path) -> list[str]:
    run = tmp / "runs" / "x"
    (run / "checkpoints" / "step-00000002").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(GOOD))
    for name in ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors"):
        (run / "checkpoints" / "step-00000002" / name).write_bytes(b"\x08\0\0\0\0\0\0\0{}")
    (run / "checkpoints" / "step-00000002" / "state.json").write_text('{"step": 2, "sched')
    return ["train", "--resume", str(run)]


def _model_folder(tmp: Path, config_json: str | None) -> str:
    folder = tmp / "model"
    folder.mkdir()
    if config_json is not None:
        (folder / "config.json").write_text(config_json)
    return str(folder)


def _file(tmp: Path, name: str, data: bytes) -> str:
    (tmp / name).write_bytes(data)
    return str(tmp / name)


def model(make: Callable[[Path], str], expect: str, **changes) -> Callable[[Path], list[str]]:
    return lambda tmp: ["check", config(tmp, {"model.source": make(tmp), **changes})]


def _mkdirs(*names: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        for name in names:
            (tmp / name).mkdir(parents=True)
            (tmp / name / "keep.txt").write_text("mine")
    return make


HEX = "0123456789abcdef" * 2
R = Row
BAD_INPUTS = [
    # --- config values --------------------------------------------------------------------------------------------
    R("lr-inf", "config", check({"training.lr": float("inf")}), ("training.lr",)),
    R("alpha-inf", "config", check({"adapter.alpha": float("inf")}), ("adapter.alpha",)),
    R("tolerance-inf", "config", check({"selection.tolerance": float("inf")}), ("selection.tolerance",)),
    R("outage-inf", "config", check({"tracking.max_outage_seconds": float("inf")}), ("tracking.max_outage_seconds",)),
    R("cpus-inf", "config", check({"resources.trainer_cpus": float("inf")}), ("resources.trainer_cpus",)),
    R("weight-decay-inf", "config", check({"training.weight_decay": float("inf")}), ("training.weight_decay",)),
    R("seed-negative", "config", check({"training.seed": -1}), ("training.seed",)),
    R("seed-2**32", "config", check({"training.seed": 2**32}), ("training.seed",)),
    R("seed-huge", "config", check({"training.seed": 10**30}), ("training.seed",)),
    R("r_max-above-layers", "config", check({"adapter.r_max": 4096}), ("adapter.r_max",)),
    R("rank-above-layers", "config", check({"adapter.method": "qlora", "adapter.rank": 100000}), ("adapter.rank",)),
    R("baseline-rank-above-layers", "config", check({"baselines.ranks": [2, 5000]}), ("baselines.ranks",)),
    R("bootstrap-huge", "config", check({"evaluation.bootstrap_samples": 10**12}), ("evaluation.bootstrap_samples",)),
    R("max_restarts-huge", "config", check({"resources.max_restarts": 10**12}), ("resources.max_restarts",)),
    R("max_steps-huge", "config", check({"training.max_steps": 10**15}), ("training.max_steps",)),
    R("max_seq_len-huge", "config", check({"data.max_seq_len": 10**12}), ("data.max_seq_len",)),
    R("metric-unknown", "config", check({"selection.metric": "acuracy"}), ("selection.metric",)),
    R("metric-empty", "config", check({"selection.metric": ""}), ("selection.metric",)),
    R("metric-not-a-sweep-metric", "config", check({"selection.metric": "train_loss"}), ("selection.metric",)),
    R("target_modules-empty", "config", check({"adapter.target_modules": []}), ("adapter.target_modules",)),
    R("target_modules-blank", "config", check({"adapter.target_modules": [""]}), ("adapter.target_modules",)),
    R("target_modules-no-match", "config", check({"adapter.target_modules": ["nope_proj"]}), ("adapter.target_modules",)),
    R("tracking-scheme-suffix", "config", check({"tracking.uri": "postgresqlXYZ://h/db"}), ("tracking.uri",)),
    R("tracking-no-scheme", "config", check({"tracking.uri": "mlflow.db"}), ("tracking.uri",)),
    R("tracking-sqlite-no-path", "config", check({"tracking.uri": "sqlite://"}), ("tracking.uri",)),
    R("tracking-postgres-nothing", "config", check({"tracking.uri": "postgresql://"}), ("tracking.uri",)),
    R("storage-scheme-suffix", "config", study(storage="postgresqlXYZ://h/db"), ("storage",)),
    R("storage-bare-mysql", "config", study(storage="mysql"), ("storage",)),
    R("storage-journal-empty", "config", study(storage="journal:"), ("storage",)),
    R("storage-sqlite-missing-folder", "config", study(storage="sqlite:////no/such/folder/o.db"), ("storage",)),
    R("name-dotdot", "config", check({"name": "../x"}), ("name",)),
    R("name-slash", "config", check({"name": "a/b"}), ("name",)),
    R("name-newline", "config", check({"name": "a\nb"}), ("name",)),
    R("name-dot", "config", check({"name": "."}), ("name",)),
    R("study-name-dotdot", "config", study(name="../s"), ("name",)),
    R("baseline-method-list", "config", check({"baselines.methods": [{"method": [1]}]}), ("baselines.methods",)),
    R("baseline-name-list", "config", check({"baselines.methods": [{"name": [1], "method": "qlora"}]}),
      ("baselines.methods",)),
    R("baseline-rank-inf", "config", check({"baselines.methods": [{"method": "qlora", "rank": float("inf")}]}),
      ("baselines.methods[0]", "adapter.rank")),
    R("baseline-not-mapping", "config", check({"baselines.methods": [5]}), ("baselines.methods",)),
    R("baseline-name-path", "config", check({"baselines.methods": [{"name": "../b", "method": "qlora"}]}),
      ("baselines.methods",)),
    # --- YAML itself ----------------------------------------------------------------------------------------------
    R("duplicate-section", "yaml", check_yaml("training: {max_steps: 3}\n"), ("training", "config.yaml")),
    R("duplicate-nested-key", "yaml", check(text="data: {dataset: tiny-qa, dataset: tiny-qa}\n"),
      ("dataset", "config.yaml")),
    R("duplicate-deep-key", "yaml", check(text="data: {dataset: tiny-qa}\nadapter:\n  adalora: {init_r: 8, init_r: 9}\n"),
      ("init_r", "config.yaml")),
    R("alias-bomb", "yaml", check(text=BOMB + "name: *i\ndata: {dataset: tiny-qa}\n"), ("config.yaml", "alias")),
    R("alias-bomb-study", "yaml", lambda tmp: ["study", config(tmp, text=BOMB, name="study.yaml")], ("study.yaml", "alias")),
    R("alias-bomb-set", "yaml", lambda tmp: ["check", config(tmp), "--set", "name=" + BOMB_FLOW], ("--set", "name")),
    R("duplicate-study-key", "yaml", lambda tmp: ["study", config(tmp, text="name: a\nname: b\n", name="study.yaml")],
      ("name", "study.yaml")),
    R("yaml-python-tag", "yaml", check(text="name: !!python/object/apply:os.system [echo hi]\n"), ("config.yaml",)),
    R("yaml-deep-nesting", "yaml", check(text="data: {dataset: tiny-qa}\nname: " + "[" * 500 + "]" * 500 + "\n"),
      ("config.yaml", "nested")),
    # --- data -----------------------------------------------------------------------------------------------------
    R("record-not-object", "data", records([1, 2]), ("train.jsonl:41",)),
    R("record-missing-field", "data", records({"prompt": "x"}), ("train.jsonl:41",)),
    R("record-empty-messages", "data", records({"messages": []}), ("train.jsonl:41",)),
    R("record-message-no-content", "data", records({"messages": [{"role": "user"}, {"role": "assistant"}]}),
      ("train.jsonl:41",)),
    R("record-non-string", "data", records({"prompt": 1, "completion": "x"}), ("train.jsonl:41",)),
    R("record-non-utf8", "data", records(raw=b'{"prompt": "\xff\xfe", "completion": "x"}\n'), ("train.jsonl:41",)),
    R("record-deep-nesting", "data", records('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + ', "completion": "x"}'),
      ("train.jsonl:41",)),
    R("split-left-empty", "data", lambda tmp: records(changes={"data.validation_fraction": 0.0001,
                                                               "data.test_fraction": 0.0001})(tmp),
      ("validation",)),
    R("validation-file-bad-record", "data", lambda tmp: ["check", config(tmp, {
        "data.validation_file": _file(tmp, "val.jsonl", b'{"prompt": "a", "completion": "b"}\n"just a string"\n')})],
      ("val.jsonl:2",)),
    R("dataset-not-built", "data", check({"data.dataset": "countries"}), ("countries", "dyrank data build"),
      env={"DYRANK_HOME": "{tmp}/home"}),
    R("record-bom", "data", records(raw='\ufeff{"prompt": "a", "completion": "b"}\n'.encode()), ("train.jsonl:41",)),
    # --- model sources --------------------------------------------------------------------------------------------
    R("model-file-not-gguf", "model", model(lambda t: _file(t, "weights.bin", b"\0" * 64), "model.source"),
      ("model.source",)),
    R("model-folder-no-config", "model", model(lambda t: _model_folder(t, None), "model.source"), ("model.source",)),
    R("model-gguf-garbage", "model", model(lambda t: _file(t, "m.gguf", b"not a gguf at all"), "model.source"),
      ("model.source",)),
    R("model-config-not-json", "model", model(lambda t: _model_folder(t, "{oops"), "model.source"), ("config.json",)),
    R("model-registered-not-fetched", "model", check({"model.source": "smollm2-135m-instruct"}),
      ("smollm2-135m-instruct", "dyrank models fetch"), env={"DYRANK_HOME": "{tmp}/home"}),
    R("model-device-file", "model", check({"model.source": "/dev/null"}), ("model.source", "/dev/null")),
    R("model-config-json-list", "model", model(lambda t: _model_folder(t, "[]"), "model.source"), ("config.json",)),
    # --- studies --------------------------------------------------------------------------------------------------
    R("space-inf-high", "study", study({"training.lr": {"type": "float", "low": 1e-4, "high": float("inf")}}),
      ("search_space.training.lr",)),
    R("space-inf-low", "study", study({"adapter.alpha": {"type": "float", "low": float("-inf"), "high": 8}}),
      ("search_space.adapter.alpha",)),
    R("space-step-zero", "study", study({"adapter.alpha": {"type": "float", "low": 1, "high": 8, "step": 0}}),
      ("search_space.adapter.alpha",)),
    R("space-step-negative", "study", study({"adapter.r_max": {"type": "int", "low": 2, "high": 4, "step": -1}}),
      ("search_space.adapter.r_max",)),
    R("space-schema-refuses", "study", study({"training.seed": {"type": "int", "low": 0, "high": 2**40}}),
      ("search_space.training.seed",)),
    R("space-inf-max-steps", "study", study({"training.max_steps": {"type": "int", "low": 1, "high": float("inf")}}),
      ("search_space.training.max_steps",)),
    R("sampler-seed-negative", "study", study(sampler={"seed": -1}), ("sampler.seed",)),
    R("space-int-step-fraction", "study", study({"adapter.r_max": {"type": "int", "low": 2, "high": 4, "step": 0.5}}),
      ("search_space.adapter.r_max",)),
    R("storage-postgres-nothing", "study", study(storage="postgresql://"), ("storage",)),
    # --- paths and files ------------------------------------------------------------------------------------------
    R("config-fifo", "paths", _fifo, ("config.yaml",)),
    R("config-directory", "paths", lambda tmp: ["check", str(tmp)], (str("{tmp}"),)),
    R("config-nul", "paths", lambda tmp: ["check", "conf\0ig.yaml"], ("conf",)),
    R("export-config-broken", "paths", export({"adapter_config.json": b"{"}), ("adapter_config.json",)),
    R("export-meta-broken", "paths", export({"dyrank_adapter.json": b'{"r_max": '}), ("dyrank_adapter.json",)),
    R("export-safetensors-empty", "paths", export({"adapter_model.safetensors": b""}), ("adapter_model.safetensors",)),
    R("export-safetensors-truncated", "paths", export({"adapter_model.safetensors": b"\x40\0\0\0\0\0\0\0{\"a"}),
      ("adapter_model.safetensors",)),
    R("export-out-not-empty", "paths", export(out="full"), ("--out",)),
    R("export-out-inside-source", "paths", export(out="{src}/adapter"), ("--out",)),
    R("export-out-under-file", "paths", export(out="afile/out"), ("--out",)),
    R("export-bogus-run-id", "paths", lambda tmp: ["export", HEX, "--rank", "2", "--out", "o"], (HEX,)),
    R("export-bogus-name", "paths", lambda tmp: ["export", "no-such-thing", "--rank", "2", "--out", "o"],
      ("no-such-thing",)),
    R("export-rank-zero", "paths", export(rank=0), ("rank 0",)),
    R("export-out-empty", "paths", export(out=""), ("--out",)),
    R("resume-bogus-run-id", "paths", lambda tmp: ["resume", HEX], (HEX,)),
    R("resume-bogus-text", "paths", lambda tmp: ["resume", "../etc"], ("../etc",)),
    R("report-bogus-run-id", "paths", lambda tmp: ["report", HEX], (HEX,)),
    R("report-out-not-empty", "paths", lambda tmp: (_mkdirs("full")(tmp), ["report", HEX, "--out", "full"])[1],
      ("--out",)),
    R("train-resume-summary-truncated", "paths", _resume_broken_summary, ("train_summary.json",)),
    R("train-resume-checkpoint-damaged", "paths", _resume_damaged_checkpoint, ("step-00000002",)),
    R("train-out-not-empty", "paths", train_with(out="full", before=_mkdirs("full")), ("--out",)),
    R("train-out-under-file", "paths", train_with(out="afile/run", before=lambda t: (t / "afile").write_text("x")),
      ("--out",)),
    R("data-build-out-not-empty", "paths", lambda tmp: (_mkdirs("full")(tmp), ["data", "build", "countries",
                                                                               "--out", "full"])[1], ("--out",)),
    R("data-build-out-under-file", "paths", lambda tmp: ((tmp / "afile").write_text("x"),
                                                         ["data", "build", "countries", "--out", "afile/d"])[1],
      ("--out",)),
    R("data-build-max-records-negative", "paths", lambda tmp: ["data", "build", "wordnet", "--max-records", "-5"],
      ("--max-records",)),
    R("ui-port-too-big", "paths", lambda tmp: ["ui", "--mlflow-port", "70000"], ("--mlflow-port",)),
    R("ui-port-negative", "paths", lambda tmp: ["ui", "--optuna-port", "-1"], ("--optuna-port",)),
    R("ui-port-65536", "paths", lambda tmp: ["ui", "--mlflow-port", "65536"], ("--mlflow-port",)),
    R("ui-port-not-a-number", "paths", lambda tmp: ["ui", "--optuna-port", "80a"], ("--optuna-port",)),
]


def _stand_ins(monkeypatch, reached: list) -> None:
    """Ray, servers and downloads are replaced: a row that reaches one got through validation."""
    def stand_in(*args, **kwargs):
        reached.append(True)
        raise Reached("validation let this through")

    import dashboards.ui
    import orchestrator.pipeline
    import orchestrator.study
    import trainers.datasets
    import trainers.model_registry

    for module, name in ((orchestrator.study, "run_study"), (orchestrator.pipeline, "run_pipeline"),
                         (dashboards.ui, "start_ui"), (trainers.datasets, "fetch_source"),
                         (trainers.model_registry, "fetch")):
        monkeypatch.setattr(module, name, stand_in)


def run_row(row: Row, tmp: Path, monkeypatch, capsys) -> tuple[str, str]:
    """(verdict, stderr): clean, vague (no field/file named, or more than one message), traceback, accepted,
    or left-files (a clean message, but the command left files behind)."""
    monkeypatch.chdir(tmp)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in row.env.items():
        monkeypatch.setenv(key, value.replace("{tmp}", str(tmp)))
    reached: list = []
    _stand_ins(monkeypatch, reached)
    argv = row.argv(tmp)
    before = {p for p in tmp.rglob("*")}
    code, escaped = None, None
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("row took over 20 s")))
    signal.alarm(20)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    except Exception as exc:  # noqa: BLE001 - a traceback the user would have seen
        escaped = exc
    finally:
        signal.alarm(0)
    out, err = capsys.readouterr()
    expect = [e.replace("{tmp}", str(tmp)) for e in row.expect]
    if (escaped is not None and not reached) or "Traceback" in err:
        return "traceback", f"{type(escaped).__name__}: {escaped}" if escaped else err
    if reached or code == 0:
        return "accepted", out[-300:] + err
    left = {p for p in tmp.rglob("*")} - before
    if err.count("error:") != 1 or not all(e in err for e in expect) or code != 2:
        return "vague", f"exit {code}: {err}"
    if left:
        return "left-files", f"{sorted(str(p.relative_to(tmp)) for p in left)}: {err}"
    return "clean", err


@pytest.mark.parametrize("row", BAD_INPUTS, ids=[r.id for r in BAD_INPUTS])
def test_bad_input_is_refused_in_one_line(row, tmp_path, monkeypatch, capsys):
    verdict, detail = run_row(row, tmp_path, monkeypatch, capsys)
    assert verdict == "clean", f"{row.kind} {row.id}: {verdict.upper()}: {detail[:600]}"
    assert len(detail.strip().splitlines()) <= 8, "one message, not a dump"


def test_every_class_has_three_rows():
    kinds = [r.kind for r in BAD_INPUTS]
    assert {k: kinds.count(k) for k in set(kinds)} == {k: kinds.count(k) for k in set(kinds) if kinds.count(k) >= 3}
    assert set(kinds) == {"config", "yaml", "data", "model", "study", "paths"}


# --- the CLI boundary and what a failed command leaves ---------------------------------------------------------


def test_an_unexpected_error_is_one_line_pointing_at_debug_which_shows_the_traceback(tmp_path, monkeypatch, capsys):
    import orchestrator.cli as cli

    def broken(args):
        raise KeyError("a bug, not bad input")

    monkeypatch.setattr(cli, "cmd_check", broken)
    assert main(["check", config(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unexpected KeyError" in err and "run with --debug for the traceback" in err
    for argv in (["--debug", "check", config(tmp_path)], ["check", config(tmp_path), "--debug"]):
        with pytest.raises(KeyError, match="a bug"):
            main(argv)


def test_an_os_error_names_its_file(tmp_path, monkeypatch, capsys):
    import orchestrator.cli as cli

    def unreadable(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked.yaml"))

    monkeypatch.setattr(cli, "cmd_check", unreadable)
    assert main(["check", config(tmp_path)]) == 2
    assert capsys.readouterr().err == f"dyrank check: error: {tmp_path / 'locked.yaml'}: Permission denied\n"


def test_train_failing_during_set_up_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    # A model folder that passes the light checks but cannot be loaded: the failure comes after runs/NAME was made.
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": "wide"}')
    monkeypatch.chdir(tmp_path)
    assert main(["train", config(tmp_path, {"model.source": str(folder)})]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "model"]


def test_a_study_that_fails_validation_creates_no_storage(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = study({"training.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "step": 0}})(tmp_path)
    assert main(argv) == 2
    assert "search_space.training.lr.step" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
