"""The one configuration schema of a pipeline: a training job's sections (trainers/config.py) composed with what
only a pipeline needs: rank selection, baselines, tracking and resources.

`load_config(path, overrides)` reads a YAML file, applies `--set a.b=value` overrides and validates.
Any problem raises `ConfigError` with one message that names the file or the field; the CLI prints
it and exits non-zero. `dyrank check` prints the resolved config from this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from evaluators.selection import SWEEP_METRICS
from orchestrator.tracking_uri import parse_tracking_uri
from trainers.config import JobConfig
from trainers.config_base import (ConfigError, FieldError, PositiveFloat, Section, apply_overrides, bounded, error_lines,
                                  plain_name, read_config_file, validate_config)

from trainers.methods import method_names

__all__ = ["BaselineJob", "Config", "ConfigError", "apply_overrides", "load_config", "parse_config"]

JOB_SECTIONS = tuple(JobConfig.model_fields)  # what a trainer or evaluator actor receives


class SelectionConfig(Section):
    policy: Literal["best", "smallest-within", "smallest-not-worse"] = Field(
        "best", description="best; smallest-within: the smallest rank within tolerance of the best; smallest-not-worse: "
        "the smallest rank not worse than the best by more than margin at confidence (paired bootstrap over examples).")
    metric: str = Field("eval_loss", description="Sweep metric to select on (validation split): "
                        + ", ".join(SWEEP_METRICS) + ".")
    greater_is_better: bool = Field(False, description="Direction of the metric.")
    tolerance: float = Field(0.01, ge=0.0, description="smallest-within: relative slack from the best value.")
    margin: float = Field(0.01, ge=0.0, description="smallest-not-worse: how much worse than the best rank a rank may "
                          "be, relative to the best value (0.01 = 1%); larger picks smaller ranks.")
    confidence: float = Field(0.95, ge=0.5, lt=1.0, description="smallest-not-worse: one-sided confidence that a "
                              "rank's shortfall stays within margin; higher demands more evidence before a smaller rank.")

    @field_validator("metric")
    @classmethod
    def _a_sweep_metric(cls, value: str) -> str:
        # Checked here, not after the sweep: every rank's row has exactly these.
        if value not in SWEEP_METRICS:
            raise ValueError(f"not a metric the rank sweep records; use one of {', '.join(SWEEP_METRICS)}")
        return value

    @model_validator(mode="after")
    def _paired_metric(self) -> "SelectionConfig":
        # Perplexity is exp(loss): its paired bootstrap is the loss's; say so instead of failing after the sweep.
        if self.policy == "smallest-not-worse" and self.metric == "eval_perplexity":
            raise FieldError(("metric",), "smallest-not-worse compares per-example values: use eval_loss or "
                             "eval_exact_match", self.metric)
        return self


class BaselinesConfig(Section):
    ranks: list[bounded(2**16)] = Field(default_factory=lambda: [8, 64], description="QLoRA baselines trained beside the QDyLoRA run.")
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

    @field_validator("methods")
    @classmethod
    def _entries_shaped(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each entry's shape here (its adapter keys are validated with the job it makes): a string method and
        an optional plain-name `name`; anything else is named by its index, not left to fail as a TypeError."""
        for index, entry in enumerate(value):
            if "method" in entry and not isinstance(entry["method"], str):
                raise FieldError((index, "method"), f"must be a method name ({', '.join(method_names())})",
                                 entry["method"])
            if "name" in entry:
                if not isinstance(entry["name"], str):
                    raise FieldError((index, "name"), "must be a plain name (a string)", entry["name"])
                try:
                    plain_name(entry["name"])
                except ValueError as exc:
                    raise FieldError((index, "name"), str(exc), entry["name"]) from None
        return value


@dataclass(frozen=True)
class BaselineJob:
    """One baseline training: its name (the MLflow run name), method, the one rank it is scored at, its job config."""

    name: str
    method: str
    rank: int
    config: JobConfig


class TrackingConfig(Section):
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


class ResourcesConfig(Section):
    trainer_gpus: float = Field(0.0, ge=0.0, description="GPUs per trainer actor (fractions share a card).")
    trainer_cpus: PositiveFloat = Field(1.0, description="CPUs per trainer actor.")
    evaluator_gpus: float = Field(0.0, ge=0.0, description="GPUs per evaluator actor.")
    evaluator_cpus: PositiveFloat = Field(1.0, description="CPUs per evaluator actor.")
    gpu_memory_resource: str | None = Field(None, description="Custom Ray resource a worker must hold, e.g. gpu_32gb.")
    gpu_memory_gb: PositiveFloat | None = Field(
        None, description="Memory of one GPU, in GiB; dyrank plan and dyrank run refuse actors whose estimated peak "
        "exceeds their share. Default: read from gpu_memory_resource (gpu_32gb -> 32), else unchecked.")
    num_evaluators: bounded(4096) | None = Field(None, description="Evaluator pool size; default: what resources allow.")
    ray_address: str | None = Field(
        None, description="Ray cluster to join (RAY_ADDRESS wins); default: start a private local Ray on 127.0.0.1."
    )
    max_restarts: bounded(100, low=0) = Field(2, description="Times a dead actor is restarted; its unfinished work is retried.")

    def gpu_budget_gb(self) -> float | None:
        """GiB of one GPU as declared (gpu_memory_gb, else the number in a gpu_<N>gb resource name)."""
        if self.gpu_memory_gb is not None:
            return self.gpu_memory_gb
        match = re.fullmatch(r"gpu_(\d+(?:\.\d+)?)gb", self.gpu_memory_resource or "")
        return float(match.group(1)) if match else None


class Config(JobConfig):
    """A pipeline: one training job (the sections of JobConfig) plus selection, baselines, tracking, resources."""

    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    _baseline_jobs: list[BaselineJob] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _baselines_valid(self) -> "Config":
        """Each baseline job validated once, here (and again only when a field of this config is assigned)."""
        jobs = _baseline_jobs(self)
        names = [job.name for job in jobs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"baselines: jobs repeat {repeated}; give baselines.methods entries a `name`")
        self._baseline_jobs = jobs
        return self

    def baseline_jobs(self) -> list[BaselineJob]:
        """Every baseline: the QLoRA ranks, then baselines.methods, in that order."""
        return list(self._baseline_jobs)

    def job(self) -> JobConfig:
        """The main training job's config, as trainers and evaluators read it."""
        return JobConfig.model_validate(self.model_dump(include=set(JOB_SECTIONS)))


def _baseline_jobs(cfg: Config) -> list[BaselineJob]:
    """A baseline's job config is the main job's with the entry's adapter keys, the base its method needs and its
    one rank scored; it is validated like any job config and its errors name the entry."""
    main = cfg.model_dump(mode="json", include=set(JOB_SECTIONS))
    entries = [{"method": "qlora", "rank": r} for r in cfg.baselines.ranks] + list(cfg.baselines.methods)
    jobs = []
    for index, entry in enumerate(entries):
        from_ranks = index < len(cfg.baselines.ranks)
        where = f"baselines.ranks[{index}]" if from_ranks else f"baselines.methods[{index - len(cfg.baselines.ranks)}]"
        entry = dict(entry)
        name = entry.pop("name", None)
        if "method" not in entry:
            raise ValueError(f"{where}: needs a method ({', '.join(method_names())})")
        job = yaml.safe_load(yaml.safe_dump(main))  # a deep copy
        job["adapter"].update(entry)
        job["evaluation"]["ranks"] = "all"
        try:
            job_config = JobConfig.model_validate(_on_its_base(job))
            job_config.evaluation.ranks = [job_config.adapter.full_rank]
        except ValidationError as exc:
            raise ValueError(f"{where} ({entry.get('method')}): " + "; ".join(
                f"{field}: {msg}".removeprefix("(top level): ") for field, msg in error_lines(exc))) from None
        a = job_config.adapter
        jobs.append(BaselineJob(name or f"{a.method}-r{a.full_rank}", a.method, a.full_rank, job_config))
    return jobs


def _on_its_base(job: dict) -> dict:
    """The quantization a baseline's method needs: a 16-bit method gets a 16-bit base, a 4-bit one a 4-bit base."""
    from trainers.methods import get_spec

    try:
        base = get_spec(job["adapter"]["method"]).base
    except (ValueError, TypeError):
        return job  # an unknown method: validation names it
    if base != "config":
        job["quantization"]["load_in_4bit"] = base == "4bit"
    return job


def parse_config(raw: Any, source: str = "<config>") -> Config:
    return validate_config(Config, raw, source)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    return parse_config(read_config_file(path, overrides), str(path))
