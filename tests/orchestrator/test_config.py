"""The config schema: QLoRA defaults, typed `--set` overrides, path resolution and ConfigError messages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from orchestrator.config import Config, ConfigError, apply_overrides, load_config, parse_config
from trainers.config import AdapterConfig, DataConfig, QuantizationConfig, TrainingConfig

TINY_YAML = Path(__file__).resolve().parents[2] / "examples" / "tiny.yaml"

MINIMAL = {"data": {"dataset": "tiny-qa"}}


def _raw(**sections) -> dict:
    raw = copy.deepcopy(MINIMAL)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def _write(path: Path, raw) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --- defaults -------------------------------------------------------------------------------------------------


def test_defaults_follow_qlora():
    cfg = parse_config(MINIMAL)
    assert cfg.training.lr == 2e-4
    assert cfg.training.max_grad_norm == 0.3
    assert cfg.training.warmup_ratio == 0.03
    assert cfg.training.lr_scheduler == "constant"
    assert cfg.training.optimizer == "paged_adamw_32bit"
    assert cfg.training.weight_decay == 0.0
    assert cfg.adapter.dropout == 0.1
    assert cfg.adapter.target_modules == "all-linear"
    assert cfg.adapter.method == "qdylora"
    assert (cfg.adapter.r_min, cfg.adapter.r_max) == (1, 64)
    assert cfg.quantization.load_in_4bit is True
    assert cfg.quantization.quant_type == "nf4"
    assert cfg.quantization.double_quant is True
    assert cfg.model.trust_remote_code is False


def test_section_defaults_match_config_defaults():
    # The sections alone carry the same defaults (no second source of truth).
    assert TrainingConfig().lr == 2e-4 and TrainingConfig().max_grad_norm == 0.3
    assert AdapterConfig().r_max == 64 and AdapterConfig().dropout == 0.1
    assert QuantizationConfig().quant_type == "nf4" and QuantizationConfig().double_quant


def test_data_has_no_default_source():
    with pytest.raises(ConfigError, match="data"):
        parse_config({})


# --- loading the example --------------------------------------------------------------------------------------


def test_tiny_example_loads_with_its_values():
    cfg = load_config(TINY_YAML)
    assert cfg.name == "tiny"
    assert (cfg.adapter.r_min, cfg.adapter.r_max) == (1, 8)
    assert cfg.training.max_steps == 40 and cfg.training.lr == 2e-3
    assert cfg.data.dataset == "tiny-qa" and cfg.data.max_seq_len == 64
    assert cfg.baselines.ranks == [2, 8]
    assert cfg.eval_ranks() == list(range(1, 9))


def test_to_yaml_round_trips():
    cfg = load_config(TINY_YAML, ["training.lr=1e-4", "evaluation.ranks=[4, 1, 2]"])
    again = parse_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.evaluation.ranks == [4, 1, 2]


# --- overrides ------------------------------------------------------------------------------------------------


def test_overrides_are_typed_by_yaml():
    raw = apply_overrides({}, ["training.max_steps=10", "training.lr=0.5", "evaluation.ranks=[1, 2, 4]",
                               "data.packing=true", "name=run-1", "tracking.uri=null"])
    assert raw == {
        "training": {"max_steps": 10, "lr": 0.5},
        "evaluation": {"ranks": [1, 2, 4]},
        "data": {"packing": True},
        "name": "run-1",
        "tracking": {"uri": None},
    }
    assert type(raw["training"]["max_steps"]) is int and type(raw["training"]["lr"]) is float


def test_overrides_change_the_loaded_config():
    cfg = load_config(TINY_YAML, ["training.lr=1e-4", "evaluation.ranks=[1,2,4]", "adapter.update_mode=frozen",
                                  "training.max_steps=7"])
    assert cfg.training.lr == 0.0001 and isinstance(cfg.training.lr, float)
    assert cfg.evaluation.ranks == [1, 2, 4]
    assert cfg.eval_ranks() == [1, 2, 4]
    assert cfg.adapter.update_mode == "frozen"
    assert cfg.training.max_steps == 7
    # Untouched fields keep the file's values.
    assert cfg.training.batch_size == 8 and cfg.name == "tiny"


def test_later_override_wins():
    cfg = load_config(TINY_YAML, ["training.max_steps=5", "training.max_steps=9"])
    assert cfg.training.max_steps == 9


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("nokey", "'nokey'"),
        ("=1", "KEY=VALUE"),
        (".lr=1", "'.lr'"),
        ("training..lr=1", "'training..lr'"),
        ("name.x=1", "'name' is not a section"),
        ("training.lr=[", "--set training.lr"),
    ],
)
def test_bad_override_raises_config_error(override, fragment):
    with pytest.raises(ConfigError) as info:
        apply_overrides({"name": "x", "training": {}}, [override])
    assert fragment in str(info.value)


def test_unknown_override_key_is_an_error(tmp_path):
    path = _write(tmp_path / "c.yaml", MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["training.learning_rate=1e-4"])
    assert "training.learning_rate: unknown key" in str(info.value)


# --- paths ----------------------------------------------------------------------------------------------------


def test_relative_data_paths_are_stored_absolute(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (tmp_path / "data" / name).write_text('{"prompt": "1+1=", "completion": "2"}\n')
    monkeypatch.chdir(tmp_path)
    cfg = parse_config({"data": {"train_file": "data/train.jsonl", "validation_file": "./data/../data/val.jsonl"}})
    assert Path(cfg.data.train_file).is_absolute()
    assert cfg.data.train_file == str((tmp_path / "data" / "train.jsonl").resolve())
    assert cfg.data.validation_file == str((tmp_path / "data" / "val.jsonl").resolve())
    assert cfg.data.dataset is None


def test_local_model_folder_is_stored_absolute(tmp_path, monkeypatch):
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text("{}")  # a folder without one is refused
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(_raw(model={"source": "my-model"}))
    assert cfg.model.source == str((tmp_path / "my-model").resolve())


def test_preset_model_source_is_kept_as_a_name():
    assert parse_config(_raw(model={"source": "tiny-llama"})).model.source == "tiny-llama"


@pytest.mark.parametrize(
    ("sections", "fragment"),
    [
        ({"model": {"source": "{tmp}/no-such-model"}}, "model.source"),
        ({"model": {"source": ""}}, "model.source"),
        ({"data": {"dataset": None, "train_file": "{tmp}/missing.jsonl"}}, "data.train_file"),
        ({"data": {"dataset": None, "train_file": "{tmp}"}}, "data.train_file"),
        ({"data": {"dataset": None, "train_file": ""}}, "data.train_file"),
        ({"data": {"test_file": "{tmp}/missing-test.jsonl"}}, "data.test_file"),
    ],
    ids=["model-missing", "model-empty", "train-missing", "train-is-dir", "train-empty", "test-missing"],
)
def test_bad_paths_name_the_field(tmp_path, sections, fragment):
    sections = {name: {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in values.items()}
                for name, values in sections.items()}
    with pytest.raises(ConfigError) as info:
        parse_config(_raw(**sections))
    assert fragment in str(info.value)


def test_data_needs_exactly_one_source(tmp_path):
    train = tmp_path / "t.jsonl"
    train.write_text("{}\n")
    with pytest.raises(ConfigError, match="exactly one of data.dataset and data.train_file"):
        parse_config({"data": {"dataset": "tiny-qa", "train_file": str(train)}})
    with pytest.raises(ConfigError, match="exactly one of data.dataset and data.train_file"):
        parse_config({"data": {"max_seq_len": 32}})
    with pytest.raises(ConfigError, match="data.dataset"):
        parse_config({"data": {"dataset": "no-such-set"}})


# --- value checks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("training", "max_steps", 0),
        ("training", "max_steps", -1),
        ("training", "max_steps", 2.5),
        ("training", "max_steps", "ten"),
        ("training", "max_steps", True),
        ("training", "batch_size", 0),
        ("training", "grad_accum_steps", -1),
        ("training", "checkpoint_every", 0),
        ("training", "keep_checkpoints", 0),
        ("training", "log_every", 0),
        ("training", "lr", 0),
        ("training", "lr", -1e-4),
        ("training", "lr", "fast"),
        ("training", "lr", True),
        ("training", "max_grad_norm", 0),
        ("training", "warmup_ratio", 1.0),
        ("training", "optimizer", "sgd"),
        ("data", "max_seq_len", 0),
        ("data", "validation_fraction", 0),
        ("adapter", "rank", 0),
        ("adapter", "r_max", 0),
        ("adapter", "r_min", 0),
        ("adapter", "alpha", 0),
        ("adapter", "dropout", 1.0),
        ("adapter", "method", "dora"),
        ("quantization", "quant_type", "int4"),
        ("evaluation", "batch_size", 0),
        ("evaluation", "max_samples", -1),
        ("evaluation", "ranks", []),
        ("evaluation", "ranks", [0, 1]),
        ("baselines", "ranks", [0]),
        ("resources", "num_evaluators", 0),
        ("resources", "trainer_cpus", 0),
    ],
)
def test_bad_values_name_the_field(section, key, value):
    with pytest.raises(ConfigError) as info:
        parse_config(_raw(**{section: {key: value}}), "cfg.yaml")
    message = str(info.value)
    assert message.startswith("invalid config cfg.yaml:")
    assert f"  {section}.{key}" in message


def test_booleans_stay_valid_for_boolean_fields():
    cfg = parse_config(_raw(model={"trust_remote_code": True}, data={"packing": True},
                            quantization={"load_in_4bit": False}))
    assert cfg.model.trust_remote_code is True and cfg.data.packing is True
    assert cfg.quantization.load_in_4bit is False


def test_r_min_above_r_max_is_an_error():
    with pytest.raises(ConfigError) as info:
        parse_config(_raw(adapter={"r_min": 9, "r_max": 8}))
    message = str(info.value)
    assert "adapter" in message and "r_min (9) must not exceed r_max (8)" in message
    assert "(got {" not in message  # the message is not buried under a dump of the section
    parse_config(_raw(adapter={"r_min": 8, "r_max": 8}))  # equal is fine


def test_evaluation_ranks_must_fit_the_adapter():
    with pytest.raises(ConfigError, match=r"evaluation.ranks \[16\] exceed the adapter's rank 8"):
        parse_config(_raw(adapter={"r_max": 8}, evaluation={"ranks": [2, 16]}))
    with pytest.raises(ConfigError, match="evaluation.ranks"):
        parse_config(_raw(adapter={"method": "qlora", "rank": 4}, evaluation={"ranks": [8]}))


def test_union_field_errors_name_the_field_without_pydantic_tags():
    with pytest.raises(ConfigError) as info:
        parse_config(_raw(evaluation={"ranks": "some"}))
    lines = str(info.value).splitlines()[1:]
    assert lines and all(line.startswith("  evaluation.ranks: ") for line in lines), lines


def test_unknown_keys_are_errors_at_every_level():
    with pytest.raises(ConfigError, match=r"trainig: unknown key"):
        parse_config(_raw(trainig={"lr": 1e-4}))
    with pytest.raises(ConfigError, match=r"training.learning_rate: unknown key"):
        parse_config(_raw(training={"learning_rate": 1e-4}))


def test_eval_ranks():
    assert parse_config(_raw(adapter={"r_min": 2, "r_max": 4})).eval_ranks() == [2, 3, 4]
    assert parse_config(_raw(adapter={"method": "qlora", "rank": 16})).eval_ranks() == [16]
    assert parse_config(_raw(evaluation={"ranks": [8, 2, 8, 4]})).eval_ranks() == [2, 4, 8]


def test_assignment_is_validated():
    cfg = parse_config(MINIMAL)
    with pytest.raises(ValueError):
        cfg.training.lr = 0


# --- files ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "config file not found"),
        ("", "config file is empty"),
        ("  \n\n", "config file is empty"),
        ("# only a comment\n", "holds no settings"),
        ("training:\n  lr: [1\n", "YAML syntax error"),
        ("- a\n- b\n", "top level must be a mapping"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
    ],
    ids=["missing", "empty", "blank", "comment-only", "syntax", "list", "binary"],
)
def test_bad_files_name_the_file(tmp_path, content, fragment):
    path = tmp_path / "config.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_data_config_alone_validates_files(tmp_path):
    with pytest.raises(ValueError, match="data.validation_file does not exist"):
        DataConfig(dataset="tiny-qa", validation_file=str(tmp_path / "nope.jsonl"))


def test_config_equality_is_by_value():
    assert parse_config(MINIMAL) == Config(data=DataConfig(dataset="tiny-qa"))
