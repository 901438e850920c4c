"""GaLore: full-parameter training whose gradients are projected to a low-rank subspace (galore-torch).

Every 2-D weight of the decoder's linear layers is projected (rank r, refreshed by an SVD of the gradient
every `update_proj_gap` steps, the update projected back times `scale`); embeddings, norms and the LM
head take plain AdamW steps in the same optimizer, as in the GaLore paper. Nothing is frozen, so what is
saved is the whole model (safetensors), and the evaluators score those weights.

galore8bit: galore-torch's `GaLoreAdamW8bit` on CUDA. Its `step` calls `torch.cuda.synchronize()`
unconditionally, so on the CPU galore-torch's projector drives bitsandbytes' 8-bit AdamW (which runs
there) in the same project -> 8-bit Adam update -> project back sequence.
"""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import torch
from galore_torch import GaLoreAdamW, GaLoreAdamW8bit
from galore_torch.galore_projector import GaLoreProjector
from torch import nn

from trainers.methods.base import TrainingMethod, write_adapter_meta
from trainers.methods.galore.config import effective_rank

# No strings: torch's load_state_dict casts state values and would rebuild a str from its characters' generator.
_PROJECTOR_FIELDS = ("rank", "update_proj_gap", "scale", "ortho_matrix")
MIN_8BIT_SIZE = 256  # bitsandbytes keeps smaller states in 32 bits (default 4096 would leave a tiny model's 32-bit)


class _CheckpointableProjectors:
    """Optimizer state holds GaLoreProjector objects; checkpoints need tensors and scalars only."""

    def state_dict(self):
        state = super().state_dict()
        state["state"] = {k: ({**s, "projector": {f: getattr(s["projector"], f) for f in _PROJECTOR_FIELDS}}
                              if isinstance(s.get("projector"), GaLoreProjector) else s) for k, s in state["state"].items()}
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                saved = self.state[p].get("projector") if p in self.state else None
                if isinstance(saved, dict):
                    projector = GaLoreProjector(saved["rank"], update_proj_gap=saved["update_proj_gap"],
                                                scale=saved["scale"], proj_type=group["proj_type"])
                    projector.ortho_matrix = saved["ortho_matrix"]
                    self.state[p]["projector"] = projector


class _AdamW(_CheckpointableProjectors, GaLoreAdamW):
    pass


class _AdamW8bitCuda(_CheckpointableProjectors, GaLoreAdamW8bit):
    pass


class _AdamW8bitCpu(_CheckpointableProjectors, bnb.optim.AdamW8bit):
    """galore-torch's projector around bitsandbytes' 8-bit AdamW update, as GaLoreAdamW8bit does on CUDA:
    the 8-bit state lives in the projected (r x n) space, the update is projected back onto the weight."""

    @torch.no_grad()
    def step(self, closure=None):
        if not self.initialized:
            self.check_overrides()
            self.to_gpu()
            self.initialized = True
        for gindex, group in enumerate(self.param_groups):
            for pindex, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                state = self.state[p]
                state.setdefault("step", 0)
                full = None
                if "rank" in group:
                    if "projector" not in state:
                        state["projector"] = GaLoreProjector(group["rank"], update_proj_gap=group["update_proj_gap"],
                                                             scale=group["scale"], proj_type=group["proj_type"])
                    grad = state["projector"].project(p.grad, state["step"])
                    full, p.data, p.grad = p.data, torch.zeros_like(grad), grad  # Adam steps a zero low-rank "weight"
                if "state1" not in state:
                    self.init_state(group, p, gindex, pindex)
                self.prefetch_state(p)
                self.update_step(group, p, gindex, pindex)
                if full is not None:  # p.data now holds the low-rank update; decay (decoupled) acts on the weight
                    p.data = full.add_(state["projector"].project_back(p.data))
                    if group["weight_decay"]:
                        p.data.mul_(1 - group["lr"] * group["weight_decay"])
        return None


def projected_weights(model) -> list[nn.Parameter]:
    """The 2-D weights GaLore projects: every linear layer's except the LM head."""
    head = model.get_output_embeddings()
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear) and m is not head]


class GaloreMethod(TrainingMethod):
    saved_dir = "weights"
    eight_bit = False

    def __init__(self, spec):
        super().__init__(spec)
        self.rank = None

    def attach(self, base, job):
        if getattr(base, "is_loaded_in_4bit", False):
            raise ValueError(f"{self.name} trains every weight and needs a 16-bit base, not a 4-bit one")
        if job.training.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for p in base.parameters():
            p.requires_grad_(True)
        return base

    def build_optimizer(self, model, job):
        t, g = job.training, job.adapter.galore
        projected = projected_weights(model)
        self.rank = effective_rank(g.rank, min(min(w.shape) for w in projected))
        ids = {id(p) for p in projected}
        groups = [{"params": [p for p in model.parameters() if id(p) not in ids]},
                  {"params": projected, "rank": self.rank, "update_proj_gap": g.update_proj_gap, "scale": g.scale,
                   "proj_type": "std"}]
        if not self.eight_bit:
            return _AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
        cls = _AdamW8bitCuda if next(model.parameters()).is_cuda else _AdamW8bitCpu
        return cls(groups, lr=t.lr, weight_decay=t.weight_decay, min_8bit_size=MIN_8BIT_SIZE)

    def save(self, model, job, out_dir: Path) -> Path:
        """The whole trained model: its size on disk is this method's 'adapter size'."""
        model.save_pretrained(out_dir, safe_serialization=True)
        write_adapter_meta(out_dir, {"method": self.name, "dynamic": False, "full_weights": True, "galore_rank": self.rank})
        return out_dir

    def artifacts(self, model, job) -> dict[str, object]:
        return {"galore": {"rank": self.rank, "configured_rank": job.adapter.galore.rank,
                           "projected_weights": len(projected_weights(model))}}

    def estimate_memory(self, shape, job, role: str):
        from trainers.methods.galore.memory import estimate_galore
        from trainers.models import base_dtype, resolve_compute_dtype

        q, t = job.quantization, job.training
        return estimate_galore(shape, rank=job.adapter.galore.rank, batch=t.batch_size, seq=job.data.max_seq_len,
                               base_dtype=base_dtype(job) or resolve_compute_dtype(q.compute_dtype),
                               eight_bit=self.eight_bit, role=role)


class Galore8bitMethod(GaloreMethod):
    eight_bit = True
