"""The method registry: every training method registers itself here once, and nothing else names methods.

Each method lives in its own folder below this one and calls `register_method(MethodSpec(...))` at the
bottom of its `__init__.py` (PEFT's `register_peft_method` pattern). The config schema, the planner, the
pipeline and the dashboards ask this registry (`get_spec`, `method_names`, `make_trainer`); none of them
tests a method's name. Adding a method is one folder and one registration line.

Import-light on purpose (no torch): a spec names its options model (pydantic) and where its training code
lives (`trainer="package.module:Class"`), which is imported only when a run trains, evaluates or plans.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel


@dataclass(frozen=True)
class MethodSpec:
    """What the rest of dyrank needs to know about one training method."""

    name: str
    summary: str  # one line: `dyrank check` and the schema's description list it
    trainer: str | type  # "module:Class" (imported on first use) or the class: a `trainers.methods.base.TrainingMethod`
    label: str = ""  # how reports name it (default: the name)
    base: Literal["4bit", "16bit", "config"] = "config"  # the base it trains on; config: quantization.load_in_4bit decides
    rank_dynamic: bool = False  # one trained adapter is usable, and scored, at every rank r_min..r_max
    samples_rank: bool = True  # a rank-dynamic method trains one sampled rank per step (False: at r_max, qlora-svd)
    saves_adapter: bool = True  # False: saves the whole trained model (full-parameter methods)
    options_key: str | None = None  # its section under `adapter:` in the config, e.g. adalora
    options: type[BaseModel] | None = None  # that section's pydantic model (its fields validate themselves)
    rank_of: Callable[[Any], int] | None = None  # adapter section -> the one rank it trains (default: rank)
    check_adapter: Callable[[Any], None] | None = None  # cross-field checks on the adapter section; raise ValueError
    check_job: Callable[[Any], None] | None = None  # checks that need the whole job (e.g. training.max_steps)

    @property
    def display(self) -> str:
        return self.label or self.name

    def full_rank(self, adapter) -> int:
        """The adapter's full rank: r_max for a rank-dynamic method, else the one rank it trains."""
        if self.rank_dynamic:
            return adapter.r_max
        return self.rank_of(adapter) if self.rank_of else adapter.rank

    def options_of(self, adapter) -> BaseModel | None:
        return getattr(adapter, self.options_key) if self.options_key else None


_REGISTRY: dict[str, MethodSpec] = {}
_discovered = False


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method; a second registration of the same name is an error (unregister it first)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    shared = next((s for s in _REGISTRY.values() if spec.options_key and s.options_key == spec.options_key), None)
    if shared is not None and shared.options is not spec.options:
        raise ValueError(f"method {spec.name!r}: options section {spec.options_key!r} already belongs to "
                         f"{shared.name!r} with another model")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    _REGISTRY.pop(name, None)


def _discover() -> None:
    """Import every method folder below this package once; each registers itself on import."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for module in pkgutil.iter_modules(__path__):
        if module.ispkg:
            importlib.import_module(f"{__name__}.{module.name}")


def method_names() -> list[str]:
    _discover()
    return list(_REGISTRY)


def all_specs() -> list[MethodSpec]:
    _discover()
    return list(_REGISTRY.values())


def get_spec(name: str) -> MethodSpec:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(_REGISTRY)}") from None


def display_name(name: str) -> str:
    """How reports name a method; a name no longer registered (an old run's) shows as itself."""
    _discover()
    spec = _REGISTRY.get(name)
    return spec.display if spec else name


def make_trainer(name: str):
    """A fresh instance of the method's training code (the verbs trainers/finetune.py calls)."""
    spec = get_spec(name)
    cls = spec.trainer
    if isinstance(cls, str):
        module, _, attr = cls.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    return cls(spec)
