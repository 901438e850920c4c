"""The verbs every method gives the training recipe; a method overrides only what it does differently."""

from __future__ import annotations

from pathlib import Path

from trainers.optim import build_optimizer


class Method:
    name: str
    saved_dir = "adapter"  # what `save` writes under the run folder

    def attach(self, base, cfg):
        """The model to train, built on the loaded base."""
        raise NotImplementedError

    def build_optimizer(self, model, cfg):
        t = cfg.training
        return build_optimizer(t.optimizer, model.parameters(), t.lr, t.weight_decay)

    def after_optimizer_step(self, model, step: int) -> None:
        """Called after `optimizer.step()` and before `zero_grad()` with the 1-based optimizer step (AdaLoRA)."""

    def save(self, model, cfg, out_dir: Path) -> Path:
        """Write what evaluators and users load (safetensors) into out_dir; return it."""
        raise NotImplementedError

    def artifacts(self, model, cfg) -> dict[str, object]:
        """JSON-able records worth keeping beside the saved weights (e.g. AdaLoRA's rank allocation)."""
        return {}


def trainable_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
