"""The verbs every method gives the training recipe and the planner; a method overrides only what it does
differently. The recipe (trainers/finetune.py) calls attach -> build_optimizer -> (train steps, each followed
by after_optimizer_step) -> save and artifacts; checkpoints hold state_dict beside the weights (restored by
load_state_dict); `dyrank plan` calls estimate_memory."""

from __future__ import annotations

import json
from pathlib import Path

from trainers.atomic import write_json_atomic
from trainers.hub import set_portable_base
from trainers.optim import build_optimizer

ADAPTER_META = "dyrank_adapter.json"  # what dyrank needs beside a PEFT adapter (ranks, method); plain PEFT ignores it


def write_adapter_meta(out_dir: Path, meta: dict) -> None:
    write_json_atomic(Path(out_dir) / ADAPTER_META, meta)


def read_adapter_meta(folder: Path) -> dict | None:
    path = Path(folder) / ADAPTER_META
    return json.loads(path.read_text()) if path.exists() else None


# How a rank-b prefix of a dynamic adapter is scaled, recorded in its meta as "scaling": "alpha/rank" (DyLoRA's
# alpha/b, the default) or "alpha/r_max" (SVD truncation of a QLoRA r_max adapter keeps its trained scale).
SCALINGS = ("alpha/rank", "alpha/r_max")


def scaling_rank(meta: dict | None) -> int | None:
    """The rank alpha is divided by at every active rank, or None when it is the active rank itself (alpha/b)."""
    scaling = (meta or {}).get("scaling", "alpha/rank")
    if scaling not in SCALINGS:
        raise ValueError(f"{ADAPTER_META}: unknown scaling {scaling!r}; known: {', '.join(SCALINGS)}")
    return int(meta["r_max"]) if scaling == "alpha/r_max" else None


class TrainingMethod:
    saved_dir = "adapter"  # what `save` writes under the run folder

    def __init__(self, spec):
        self.spec = spec
        self.name = spec.name

    def attach(self, base, job):
        """The model to train, built on the loaded base."""
        raise NotImplementedError

    def build_optimizer(self, model, job):
        t = job.training
        return build_optimizer(t.optimizer, model.parameters(), t.lr, t.weight_decay)

    def training_loss(self, model, batch: dict, job):
        """The loss of one micro-batch: cross-entropy at the scored positions only, in chunks if the job says so
        (trainers/loss.py)."""
        from trainers.loss import causal_lm_loss

        return causal_lm_loss(model, batch, job.training.loss_chunk_tokens)

    def after_optimizer_step(self, model, step: int) -> None:
        """Called after `optimizer.step()` and before `zero_grad()` with the 1-based optimizer step (AdaLoRA)."""

    def state_dict(self, model) -> dict:
        """Training state the method keeps outside the weights and the optimizer (AdaLoRA's running importance
        scores), for a checkpoint: nested dicts of tensors and JSON values. A method with none returns {}."""
        return {}

    def load_state_dict(self, model, state: dict | None) -> None:
        """Restore what `state_dict` returned, on a freshly attached model; None: the checkpoint predates
        method state (dyrank before checkpoints carried it)."""

    def save(self, model, job, out_dir: Path) -> Path:
        """A PEFT adapter in safetensors plus dyrank's meta (the ranks it serves); override to save otherwise."""
        a = job.adapter
        model.save_pretrained(out_dir, safe_serialization=True)
        set_portable_base(out_dir, job.model.source)  # a base id that means the same elsewhere, not a cache path
        rank = self.spec.full_rank(a)
        r_min = a.r_min if self.spec.rank_dynamic else rank
        write_adapter_meta(out_dir, {"method": self.name, "dynamic": self.spec.rank_dynamic, "r_min": r_min,
                                     "r_max": rank, "lora_alpha": a.alpha})
        return out_dir

    def artifacts(self, model, job) -> dict[str, object]:
        """JSON-able records worth keeping beside the saved weights (e.g. AdaLoRA's rank allocation)."""
        return {}

    def estimate_memory(self, shape, job, role: str):
        """Peak memory of one training actor (trainers/memory_estimate.py): a LoRA-family adapter of the
        method's full rank on the job's base and optimizer."""
        from trainers.memory_estimate import estimate_job_training

        return estimate_job_training(shape, job, rank=self.spec.full_rank(job.adapter), role=role)


def trainable_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
