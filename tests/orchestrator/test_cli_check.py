"""`dyrank check CONFIG [--set k=v]`: a good config prints resolved; bad input is one message on stderr, exit 2."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import EXIT_BAD_INPUT, main
from orchestrator.config import Config, load_config, parse_config

TINY_YAML = Path(__file__).resolve().parents[2] / "examples" / "tiny.yaml"

# A valid config; each bad case below breaks exactly one thing in it.
BASE = {
    "name": "check-test",
    "model": {"source": "tiny-llama"},
    "adapter": {"method": "qdylora", "r_min": 1, "r_max": 8, "rank": 8},
    "data": {"dataset": "tiny-qa", "max_seq_len": 64},
    "training": {"max_steps": 10, "batch_size": 2, "grad_accum_steps": 1, "lr": 2e-4, "checkpoint_every": 5},
    "evaluation": {"ranks": "all", "batch_size": 4},
}
DROP = object()


def _config(tmp_path: Path, changes: dict[str, object]) -> Path:
    """BASE with dotted `changes` applied ("{tmp}" in strings is tmp_path), written to tmp_path/config.yaml."""
    raw = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        if value is DROP:
            node.pop(last, None)
        else:
            node[last] = value.replace("{tmp}", str(tmp_path)) if isinstance(value, str) else value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _check_fails(capsys, args: list[str]) -> str:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT == 2
    assert out == "", "nothing is printed as the resolved config when it is invalid"
    assert "Traceback" not in err
    assert err.startswith("dyrank check: error: ")
    assert err.count("error:") == 1, "one message"
    return err


def test_base_config_is_valid(tmp_path, capsys):
    # Guards the bad cases: each one fails for its own change, not for something in BASE.
    assert main(["check", str(_config(tmp_path, {}))]) == 0
    assert "OK" in capsys.readouterr().err


# --- bad config values -----------------------------------------------------------------------------------------

BAD_VALUES = [
    pytest.param({"trainig": {"lr": 1e-4}}, ["trainig", "unknown key"], id="unknown-top-level-key"),
    pytest.param({"training.learning_rate": 1e-4}, ["training.learning_rate", "unknown key"], id="unknown-nested-key"),
    pytest.param({"adapter.lora.r": 4}, ["adapter.lora", "unknown key"], id="unknown-deeper-key"),
    pytest.param({"training.max_steps": "ten"}, ["training.max_steps", "'ten'"], id="max_steps-string"),
    pytest.param({"training.max_steps": 10.5}, ["training.max_steps"], id="max_steps-float"),
    pytest.param({"training.lr": "fast"}, ["training.lr"], id="lr-string"),
    pytest.param({"training.lr": True}, ["training.lr"], id="lr-bool"),
    pytest.param({"training": "fast"}, ["training"], id="section-not-a-mapping"),
    pytest.param({"training.max_steps": 0}, ["training.max_steps", "greater than 0"], id="max_steps-0"),
    pytest.param({"training.max_steps": -1}, ["training.max_steps"], id="max_steps-minus-1"),
    pytest.param({"training.batch_size": 0}, ["training.batch_size", "greater than 0"], id="batch_size-0"),
    pytest.param({"training.batch_size": -1}, ["training.batch_size", "greater than 0"], id="batch_size-minus-1"),
    pytest.param({"data.max_seq_len": 0}, ["data.max_seq_len"], id="max_seq_len-0"),
    pytest.param({"training.grad_accum_steps": 0}, ["training.grad_accum_steps"], id="grad_accum_steps-0"),
    pytest.param({"training.checkpoint_every": 0}, ["training.checkpoint_every"], id="checkpoint_every-0"),
    pytest.param({"training.keep_checkpoints": -1}, ["training.keep_checkpoints"], id="keep_checkpoints-minus-1"),
    pytest.param({"evaluation.batch_size": 0}, ["evaluation.batch_size"], id="eval-batch_size-0"),
    pytest.param({"evaluation.max_samples": -1}, ["evaluation.max_samples"], id="max_samples-minus-1"),
    pytest.param({"evaluation.ranks": []}, ["evaluation.ranks"], id="eval-ranks-empty"),
    pytest.param({"evaluation.ranks": [2, 16]}, ["evaluation.ranks", "16"], id="eval-ranks-above-r_max"),
    pytest.param({"adapter.rank": 0}, ["adapter.rank"], id="rank-0"),
    pytest.param({"adapter.r_max": 0}, ["adapter.r_max"], id="r_max-0"),
    pytest.param({"adapter.r_min": 9}, ["adapter", "r_min (9) must not exceed r_max (8)"], id="r_min-above-r_max"),
    pytest.param({"training.lr": 0}, ["training.lr", "greater than 0"], id="lr-0"),
    pytest.param({"training.lr": -1e-4}, ["training.lr", "greater than 0"], id="lr-negative"),
    pytest.param({"model.source": "{tmp}/no-such-model"}, ["model.source", "{tmp}/no-such-model", "does not exist"],
                 id="model-path-missing"),
    pytest.param({"data.dataset": DROP, "data.train_file": "{tmp}/missing.jsonl"},
                 ["data.train_file", "{tmp}/missing.jsonl", "does not exist"], id="train_file-missing"),
    pytest.param({"data.validation_file": "{tmp}/val.jsonl"}, ["data.validation_file", "{tmp}/val.jsonl"],
                 id="validation_file-missing"),
    pytest.param({"data.dataset": DROP, "data.train_file": "{tmp}"}, ["data.train_file", "not a file"],
                 id="train_file-is-a-directory"),
    pytest.param({"data.dataset": DROP}, ["data.dataset", "data.train_file"], id="no-data-source"),
]


@pytest.mark.parametrize(("changes", "expected"), BAD_VALUES)
def test_bad_value_exits_2_naming_the_field(tmp_path, capsys, changes, expected):
    err = _check_fails(capsys, [str(_config(tmp_path, changes))])
    assert f"invalid config {tmp_path / 'config.yaml'}" in err
    for fragment in expected:
        assert fragment.replace("{tmp}", str(tmp_path)) in err


# --- bad files -------------------------------------------------------------------------------------------------

BAD_FILES = [
    pytest.param(None, "config file not found", id="missing-file"),
    pytest.param("", "config file is empty", id="empty-file"),
    pytest.param("# nothing here\n", "holds no settings", id="comments-only"),
    pytest.param("training:\n  lr: [1e-4\n", "YAML syntax error", id="yaml-syntax-error"),
    pytest.param("training:\n\tlr: 1\n", "YAML syntax error", id="yaml-tab-indent"),
    pytest.param("- one\n- two\n", "top level must be a mapping", id="top-level-list"),
    pytest.param(b"\xff\xfe\x00\x01", "not UTF-8", id="binary-file"),
]


@pytest.mark.parametrize(("content", "expected"), BAD_FILES)
def test_bad_file_exits_2_naming_the_file(tmp_path, capsys, content, expected):
    path = tmp_path / "broken.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    err = _check_fails(capsys, [str(path)])
    assert expected in err
    assert str(path) in err


def test_directory_as_config_exits_2(tmp_path, capsys):
    assert str(tmp_path) in _check_fails(capsys, [str(tmp_path)])


def test_overlong_paths_exit_2_not_oserror(tmp_path, capsys):
    long_name = "x" * 300  # ENAMETOOLONG on Linux: an OSError, not a missing file
    _check_fails(capsys, [str(tmp_path / f"{long_name}.yaml")])
    err = _check_fails(capsys, [str(_config(tmp_path, {"model.source": f"{tmp_path}/{long_name}"}))])
    assert "model.source" in err


# --- bad --set -------------------------------------------------------------------------------------------------

BAD_SETS = [
    pytest.param("nokey", ["'nokey'", "KEY=VALUE"], id="no-equals"),
    pytest.param("=1", ["KEY=VALUE"], id="empty-key"),
    pytest.param(".lr=1", ["'.lr'"], id="empty-section-name"),
    pytest.param("training.lr=0", ["training.lr", "greater than 0"], id="lr-0"),
    pytest.param("training.lr=-1e-4", ["training.lr"], id="lr-negative"),
    pytest.param("training.batch_size=-1", ["training.batch_size"], id="batch_size-minus-1"),
    pytest.param("training.max_steps=ten", ["training.max_steps"], id="max_steps-string"),
    pytest.param("training.nope=1", ["training.nope", "unknown key"], id="unknown-nested-key"),
    pytest.param("nope.lr=1", ["nope", "unknown key"], id="unknown-section"),
    pytest.param("name.x=1", ["name", "not a section"], id="into-a-scalar"),
    pytest.param("training.lr=[", ["--set training.lr", "not valid YAML"], id="value-not-yaml"),
    pytest.param("adapter.r_min=9", ["adapter", "r_min (9) must not exceed r_max (8)"], id="r_min-above-r_max"),
    pytest.param("evaluation.ranks=[]", ["evaluation.ranks"], id="eval-ranks-empty"),
    pytest.param("model.source=/no/such/model/dir", ["model.source", "/no/such/model/dir"], id="model-path-missing"),
]


@pytest.mark.parametrize(("override", "expected"), BAD_SETS)
def test_bad_set_exits_2_naming_the_field(tmp_path, capsys, override, expected):
    err = _check_fails(capsys, [str(_config(tmp_path, {})), "--set", override])
    for fragment in expected:
        assert fragment in err


def test_missing_config_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["check"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: dyrank check" in err and "Traceback" not in err


# --- good configs ----------------------------------------------------------------------------------------------


def test_tiny_example_checks_ok_and_prints_the_resolved_config(capsys):
    assert main(["check", str(TINY_YAML)]) == 0
    out, err = capsys.readouterr()
    printed = parse_config(yaml.safe_load(out), "stdout")
    assert isinstance(printed, Config)
    assert printed == load_config(TINY_YAML)
    # Resolved: the file's values and the defaults it leaves out.
    assert printed.name == "tiny" and printed.adapter.r_max == 8
    assert printed.training.optimizer == "paged_adamw_32bit" and printed.training.max_grad_norm == 0.3
    assert "optimizer: paged_adamw_32bit" in out
    assert f"{TINY_YAML}: OK (qdylora, ranks 1..8)" in err


def test_set_overrides_are_typed_in_the_printed_config(capsys):
    code = main(["check", str(TINY_YAML), "--set", "training.lr=1e-4", "--set", "evaluation.ranks=[1,2,4]",
                 "--set", "adapter.method=dylora", "--set", "adapter.r_max=4", "--set", "quantization.load_in_4bit=false"])
    assert code == 0
    out, err = capsys.readouterr()
    raw = yaml.safe_load(out)
    assert raw["training"]["lr"] == 0.0001 and type(raw["training"]["lr"]) is float
    assert raw["evaluation"]["ranks"] == [1, 2, 4]
    assert raw["adapter"]["method"] == "dylora" and raw["adapter"]["r_max"] == 4
    assert "ranks 1..4" in err
    assert parse_config(raw) == load_config(TINY_YAML, ["training.lr=1e-4", "evaluation.ranks=[1,2,4]", "adapter.method=dylora",
                                                         "adapter.r_max=4", "quantization.load_in_4bit=false"])


def test_relative_train_file_is_printed_absolute(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    # enough records that the validation and test splits are not empty (check loads the data)
    (tmp_path / "data" / "train.jsonl").write_text("".join(f'{{"prompt": "{i}+{i}=", "completion": "{2 * i}"}}\n'
                                                           for i in range(40)))
    config = _config(tmp_path, {"data.dataset": DROP, "data.train_file": "data/train.jsonl"})
    monkeypatch.chdir(tmp_path)
    assert main(["check", "config.yaml"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["train_file"] == str((tmp_path / "data" / "train.jsonl").resolve())
    assert printed["data"]["dataset"] is None
    assert config.exists()


def test_check_does_not_write_files(tmp_path, monkeypatch, capsys):
    config = _config(tmp_path, {})
    monkeypatch.chdir(tmp_path)
    assert main(["check", str(config)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


# --- the installed command, as a user runs it: no traceback reaches the terminal -------------------------------


def _dyrank() -> list[str]:
    script = Path(sys.executable).with_name("dyrank")
    if script.is_file():
        return [str(script)]
    found = shutil.which("dyrank")
    return [found] if found else [sys.executable, "-m", "orchestrator.cli"]


SUBPROCESS_CASES = {
    "missing-file": (lambda tmp: [str(tmp / "absent.yaml")], 2, ["absent.yaml"]),
    "yaml-syntax-error": (lambda tmp: [str(_write_text(tmp / "bad.yaml", "training: {lr: [1\n"))], 2, ["bad.yaml"]),
    "set-lr-0": (lambda tmp: [str(TINY_YAML), "--set", "training.lr=0"], 2, ["training.lr"]),
}


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory):
    # Started together: each process pays the torch import once, in parallel, so the file stays fast.
    tmp = tmp_path_factory.mktemp("cli")
    procs = {
        name: subprocess.Popen([*_dyrank(), "check", *make_args(tmp)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for name, (make_args, _, _) in SUBPROCESS_CASES.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[name] = (proc.returncode, out, err)
    return results


@pytest.mark.parametrize("name", list(SUBPROCESS_CASES))
def test_installed_command(subprocess_results, name):
    _, expected_code, fragments = SUBPROCESS_CASES[name]
    code, out, err = subprocess_results[name]
    assert "Traceback" not in err and "Traceback" not in out
    assert code == expected_code == 2, err
    assert out == ""
    assert err.startswith("dyrank check: error: ") and err.count("error:") == 1
    for fragment in fragments:
        assert fragment in err
