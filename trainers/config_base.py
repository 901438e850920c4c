"""What every config section shares: strict sections, path checks, and errors that name the field.

Import-light (pydantic and the standard library): method folders define their options models on it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from trainers.safe_yaml import YamlError, YamlSyntaxError, load_yaml

# Every count is bounded: an absurd size (10**12 steps, samples, restarts) is a typo, not a plan.
MAX_COUNT = 2**31 - 1
PositiveInt = Annotated[int, Field(gt=0, le=MAX_COUNT, strict=True)]
PositiveFloat = Annotated[float, Field(gt=0)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, strict=True,
                            description="0..2**32-1, the range every seeded generator (numpy, torch, Optuna) accepts.")]


def bounded(high: int, low: int = 1) -> Any:
    """An int in low..high (a count with a sane ceiling: the message says the ceiling)."""
    floor = {"gt": 0} if low == 1 else {"ge": low}  # "greater than 0" reads better than ">= 1"
    return Annotated[int, Field(le=high, strict=True, **floor)]


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def plain_name(value: str) -> str:
    if not _PLAIN_NAME.fullmatch(value) or ".." in value:
        raise ValueError("must be a plain name (letters, digits, '.', '_', '-'; starting with a letter or digit; "
                         "at most 128 characters): it names folders, runs and studies")
    return value


PlainName = Annotated[str, AfterValidator(plain_name)]


class ConfigError(ValueError):
    """A config that cannot run; the message names the file or field at fault."""


class FieldError(ValueError):
    """A validator's error about a field below the one it validates: `path` is appended to pydantic's location,
    so the message still names the exact field (e.g. adapter.adalora.init_r)."""

    def __init__(self, path: tuple, message: str, value: Any = None):
        super().__init__(message)
        self.path, self.value = tuple(path), value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_non_bool(cls, value: Any, info) -> Any:
        # Lax floats/ints would turn YAML true/false into 1.0/0.0 (e.g. `lr: yes` -> lr 1.0).
        field = cls.model_fields.get(info.field_name)
        if isinstance(value, bool) and field is not None and field.annotation is not bool:
            raise ValueError("expected a value of this field's type, not true/false")
        # .inf / .nan anywhere a number is accepted: no setting means "infinitely many" or "undefined".
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


def existing_path(value: str | None, what: str, want_file: bool = False) -> str | None:
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


def error_lines(exc: ValidationError) -> list[tuple[str, str]]:
    """(field, message) per error, the field as dotted config keys."""
    lines = []
    for err in exc.errors():
        # Drop pydantic's union-member tags (e.g. "list[constrained-int]"): no config key holds "[".
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and "[" in p)]
        msg, value, quiet = err["msg"].removeprefix("Value error, "), err["input"], False
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, FieldError):
            loc, value = loc + [str(p) for p in inner.path], inner.value
            quiet = inner.value is None
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        # A whole section as "got" (from a cross-field check such as r_min <= r_max) only buries the message.
        quiet = quiet or err["type"] in ("missing", "extra_forbidden") or (
            err["type"] == "value_error" and isinstance(value, dict))
        lines.append((".".join(loc) or "(top level)", msg + ("" if quiet else f" (got {value!r})")))
    return lines


def validate_config(model: type[BaseModel], raw: Any, source: str):
    """`raw` (parsed YAML) as `model`, or one ConfigError naming the source and every field at fault."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(source, exc)) from None


def format_validation_errors(source: str, exc: ValidationError) -> str:
    return f"invalid config {source}:\n" + "\n".join(f"  {field}: {msg}" for field, msg in error_lines(exc))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=value` sets raw['a']['b']; the value is parsed as YAML so numbers and lists keep their type."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.lr=1e-4")
        try:
            value = load_yaml(text)
        except YamlError as exc:
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


def read_config_file(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """A config file's YAML with `--set` overrides applied, or a ConfigError naming the file."""
    return read_yaml_file(path, "config file", overrides)


def read_yaml_file(path: str | Path, what: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """`what` (config file, study file) as YAML through the safe loader, `--set` overrides applied; any problem
    is a ConfigError naming the file. A FIFO or a device is refused before it is opened (reading would block)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} is a folder, not a file: {path}")
    if not path.is_file():
        raise ConfigError(f"{what} not found (or not a regular file): {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} is not UTF-8 text: {path} ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:  # e.g. an embedded NUL in the name
        raise ConfigError(f"cannot read {what} {path!r}: {exc}") from None
    if not text.strip():
        raise ConfigError(f"{what} is empty: {path}")
    try:
        raw = load_yaml(text)
    except YamlError as exc:
        kind = "YAML syntax error" if isinstance(exc, YamlSyntaxError) else "refused YAML"
        raise ConfigError(f"{kind} in {path}: {exc}") from None
    if raw is None:
        raise ConfigError(f"{what} holds no settings: {path}")
    if isinstance(raw, dict):
        raw = apply_overrides(raw, list(overrides))
    return raw
