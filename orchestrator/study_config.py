"""The study schema: a base pipeline config, a search space over its fields, objectives, sampler, pruner.

`load_study_config(path, overrides)` reads STUDY.yaml; `pipeline:` is a mapping or the path of a pipeline
YAML (relative to the study file), so `--set pipeline.training.max_steps=5` reaches the base config the
same way `--set n_trials=8` reaches the study. Every point of the search space is checked against the
pipeline schema before any trial starts: a method the schema does not accept is an error naming the key.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from orchestrator.config import Config, apply_overrides, load_config
from orchestrator.tracking_uri import parse_tracking_uri
from trainers.config_base import (ConfigError, PlainName, Section, Seed, bounded, format_validation_errors,
                                  read_yaml_file)

STORAGE_FORMS = "sqlite:///PATH, postgresql[+DRIVER]://..., mysql[+DRIVER]://... or journal:PATH"


def parse_storage_url(url: str) -> tuple[str, Path | None]:
    """(scheme, local file) of an Optuna storage URL, parsed by scheme (the SQLAlchemy URL forms the tracking URIs
    share, plus journal:PATH); a ValueError names the supported forms. A local file's folder must exist: opening
    the storage would fail there only after the study had started."""
    if url.startswith("journal:"):
        path = url.removeprefix("journal:").strip()
        if not path:
            raise ValueError(f"storage {url!r}: journal:PATH needs a file path")
        scheme, file = "journal", Path(path).expanduser()
    else:
        try:
            parsed = parse_tracking_uri(url)
        except ValueError:
            parsed = None
        if parsed is None or parsed.scheme not in ("sqlite", "postgresql", "mysql"):
            raise ValueError(f"unsupported storage {url!r}; use {STORAGE_FORMS}")
        scheme, file = parsed.scheme, Path(parsed.path[1:]) if parsed.scheme == "sqlite" else None
    if file is not None and not file.resolve().parent.is_dir():
        raise ValueError(f"storage {url!r}: folder {file.resolve().parent} does not exist")
    return scheme, file

# Parent-run metrics of a pipeline an objective may name (see Pipeline.summarize); `device_seconds` is
# their sum over training, baselines and the rank sweep.
RUN_METRICS = ("best_rank", "device_seconds", "train_device_seconds", "baseline_device_seconds",
               "eval_device_seconds", "pipeline_wall_seconds")


class ParamSpace(Section):
    type: Literal["int", "float", "categorical"] = Field(description="int / float (with log: true for a log scale) / categorical.")
    low: float | None = Field(None, description="int/float: smallest value.")
    high: float | None = Field(None, description="int/float: largest value.")
    step: float | None = Field(None, gt=0, description="int/float: grid step, > 0 (not with log).")
    log: bool = Field(False, description="int/float: sample on a log scale (learning rates).")
    choices: list[Any] | None = Field(None, description="categorical: the values; lists (target modules) are allowed.")

    @model_validator(mode="after")
    def _shape(self) -> "ParamSpace":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty choices list")
            if self.low is not None or self.high is not None:
                raise ValueError("categorical takes choices, not low/high")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs low and high")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) exceeds high ({self.high})")
        if self.type == "int" and any(v is not None and v != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("int takes whole-number low, high and step")
        if self.log and (self.step is not None or self.low <= 0):
            raise ValueError("log scale needs low > 0 and no step")
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not choices")
        return self

    def labels(self) -> dict[str, Any]:
        """categorical: Optuna stores str/int/float/bool only, so a list choice travels as its JSON label."""
        return {(json.dumps(c) if isinstance(c, (list, dict)) else c): c for c in self.choices or ()}


class Objective(Section):
    metric: str = Field(description="A pipeline parent-run metric: best_<selection.metric> (the selected rank's "
                        "validation value), best_rank, device_seconds (train + baselines + sweep), "
                        "train_device_seconds, ..., or selected_test_* .")
    direction: Literal["minimize", "maximize"] = Field("minimize", description="Better is lower or higher.")


class SamplerConfig(Section):
    type: Literal["tpe", "random", "nsgaii", "qmc"] = Field("tpe", description="Optuna sampler; TPE handles single and multi-objective.")
    seed: Seed | None = Field(0, description="Sampler seed (0..2**32-1): the same study file proposes the same trials.")
    n_startup_trials: bounded(10**6) = Field(10, description="tpe: random trials before the model takes over.")


class PrunerConfig(Section):
    type: Literal["median", "percentile", "hyperband", "threshold", "none"] | None = Field(
        None, description="Stops trials whose training loss lags (single-objective only: Optuna's pruners do "
        "not support multi-objective studies). Default: median for one objective, none for several.")
    n_startup_trials: bounded(10**6, low=0) = Field(2, description="median/percentile: trials that finish before any is pruned.")
    n_warmup_steps: bounded(10**8, low=0) = Field(5, description="Training steps of a trial before it may be pruned.")
    percentile: float = Field(25.0, gt=0, lt=100, description="percentile: keep the best this-percent.")
    upper: float | None = Field(None, description="threshold: prune when the smoothed training loss exceeds this (divergence).")
    smoothing_steps: bounded(10**6) = Field(5, description="The reported value is the mean training loss of the last N steps "
                                         "(a QDyLoRA step's loss depends on its sampled rank).")


class StudyConfig(Section):
    name: PlainName = Field(description="Optuna study name (a plain name); running the same study again resumes it.")
    pipeline: Config = Field(description="The base pipeline config (a mapping, or a YAML path relative to the study file).")
    pipeline_set: list[str] = Field(default_factory=list, description="KEY=VALUE changes to the base pipeline, "
                                    "as --set pipeline.KEY=VALUE would make (e.g. fewer steps for every trial).")
    search_space: dict[str, ParamSpace] = Field(
        min_length=1, description="Dotted pipeline fields (training.lr, adapter.r_max, adapter.method, ...) and their ranges.")
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="best_eval_loss")], min_length=1,
        description="One (single-objective, prunable) or several (Pareto front) pipeline metrics.")
    n_trials: bounded(10**6) = Field(20, description="Finished trials the study aims at; interrupted ones do not count.")
    parallel: bounded(4096) | None = Field(None, description="Trials at once; default: as many as the Ray cluster's CPUs fit.")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    storage: str | None = Field(None, description="Optuna storage: default sqlite:///<cwd>/optuna.db (this driver alone); "
                                "an RDB server URL (postgresql://, mysql://) for several drivers, with heartbeats; "
                                "or journal:PATH (Optuna's JournalStorage, one driver per study at a time).")
    heartbeat_seconds: bounded(86400) = Field(60, description="RDB storages: heartbeat interval; a trial silent for twice this "
                                           "is failed and its parameters re-enqueued by the next driver.")

    @field_validator("storage")
    @classmethod
    def _storage_scheme(cls, value: str | None) -> str | None:
        if value is not None:
            parse_storage_url(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "StudyConfig":
        if len(self.objectives) > 1 and self.pruner.type not in (None, "none"):
            raise ValueError("pruner: Optuna's pruners do not support multi-objective studies; set pruner.type: none")
        if self.pruner.type == "threshold" and self.pruner.upper is None:
            raise ValueError("pruner.upper is required for the threshold pruner")
        if self.sampler.type == "qmc" and any(p.type == "categorical" for p in self.search_space.values()):
            raise ValueError("sampler qmc does not sample categorical parameters; use tpe or random")
        known = {*RUN_METRICS, f"best_{self.pipeline.selection.metric}"}
        for obj in self.objectives:
            if obj.metric not in known and not obj.metric.startswith("selected_test_"):
                raise ValueError(f"objectives: unknown metric {obj.metric!r}; known: {', '.join(sorted(known))}, selected_test_*")
        return self

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def prunable(self) -> bool:
        return len(self.objectives) == 1 and self.pruner.type != "none"

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(os.getcwd()).resolve() / 'optuna.db'}"

    def trial_config(self, params: dict[str, Any]) -> Config:
        """The pipeline config for one trial's parameters (categorical labels decoded), schema-validated."""
        raw = self.pipeline.model_dump(mode="json")
        for key, value in params.items():
            space = self.search_space[key]
            _set(raw, key, space.labels()[value] if space.type == "categorical" else value)
        return Config.model_validate(raw)


def _set(raw: dict, dotted: str, value: Any) -> None:
    *sections, leaf = dotted.split(".")
    for part in sections:
        raw = raw[part]
    raw[leaf] = value


def _check_space(cfg: StudyConfig, source: str) -> None:
    """Each bound and each choice, alone on the base config, must pass the pipeline schema."""
    base = cfg.pipeline.model_dump(mode="json")
    for key, space in cfg.search_space.items():
        node = base
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{source}: search_space.{key}: not a pipeline field")
            node = node[part]
        points = list(space.choices) if space.type == "categorical" else [space.low, space.high]
        for point in points:
            if space.type == "int":
                if float(point) != int(point):
                    raise ConfigError(f"{source}: search_space.{key}: int bounds must be whole numbers (got {point})")
                point = int(point)
            raw = copy.deepcopy(base)
            _set(raw, key, point)
            try:
                Config.model_validate(raw)
            except ValidationError as exc:
                first = format_validation_errors("", exc).splitlines()[1].strip()
                raise ConfigError(f"{source}: search_space.{key}: value {point!r} is not accepted: {first}") from None


def load_study_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    path = Path(path)
    raw = read_yaml_file(path, "study file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (name, pipeline, search_space, ...)")
    if isinstance(raw.get("pipeline"), str):
        base = (path.parent / raw["pipeline"]) if not Path(raw["pipeline"]).is_absolute() else Path(raw["pipeline"])
        raw["pipeline"] = yaml.safe_load(load_config(base).to_yaml())  # its own errors name its file
    raw = apply_overrides(raw, list(overrides))
    if isinstance(raw.get("pipeline"), dict) and isinstance(raw.get("pipeline_set"), list):
        raw["pipeline"] = apply_overrides(raw["pipeline"], [str(item) for item in raw["pipeline_set"]])
        raw = apply_overrides(raw, [o for o in overrides if o.startswith("pipeline.")])  # the command line wins
    try:
        cfg = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(str(path), exc)) from None
    _check_space(cfg, str(path))
    return cfg
