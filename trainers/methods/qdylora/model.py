"""Wiring QDyLoRA into a PEFT LoRA model: attach, switch the active rank, sample ranks, export one rank."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from trainers.adapters import ADAPTER_WEIGHTS, lora_layers
from trainers.methods.base import read_adapter_meta, scaling_rank
from trainers.methods.qdylora.layer import RankTruncatedLinear
from trainers.methods.qdylora.merge import refuse_full_rank_merge


def attach_dynamic_rank(model, update_mode: str = "cumulative", adapter: str = "default",
                        application: str = "slice") -> int:
    """Make every LoRA layer of a PEFT model rank-truncatable (by `application`: slice or mask, layer.py);
    returns how many layers were converted."""
    count = 0
    for layer in lora_layers(model, adapter):
        if not isinstance(layer.lora_A[adapter], RankTruncatedLinear):
            layer.lora_A[adapter] = RankTruncatedLinear(layer.lora_A[adapter], 0, update_mode, application)
            layer.lora_B[adapter] = RankTruncatedLinear(layer.lora_B[adapter], 1, update_mode, application)
            refuse_full_rank_merge(layer, adapter)  # PEFT's merge would scale the full B @ A by alpha / b
        count += 1
    if count == 0:
        raise ValueError("the model has no LoRA layers to make dynamic")
    return count


def set_active_rank(model, rank: int, adapter: str = "default", scale_rank: int | None = None) -> None:
    """Use A[:rank], B[:, :rank] and scaling alpha/rank in every layer, until the next call (in mask mode the
    scale sits in A's rank mask and PEFT's scaling is 1). With `scale_rank`, alpha/scale_rank at every rank
    instead (an SVD-truncated adapter keeps its trained scale, qlora-svd)."""
    for layer in lora_layers(model, adapter):
        a, b = layer.lora_A[adapter], layer.lora_B[adapter]
        if not 1 <= rank <= a.max_rank:
            raise ValueError(f"rank {rank} is outside 1..{a.max_rank}")
        # set_rank scales by alpha/rank: an effective alpha of alpha*rank/scale_rank makes that alpha/scale_rank
        alpha = layer.lora_alpha[adapter] * (rank / scale_rank if scale_rank else 1)
        a.set_rank(rank, alpha)
        b.set_rank(rank, alpha)
        layer.scaling[adapter] = 1.0 if a.application == "mask" else alpha / rank


def get_active_rank(model, adapter: str = "default") -> int:
    ranks = {layer.lora_A[adapter].active_rank for layer in lora_layers(model, adapter)}
    if len(ranks) != 1:
        raise RuntimeError(f"layers disagree on the active rank: {sorted(ranks)}")
    return ranks.pop()


class RankSampler:
    """b ~ Uniform{r_min..r_max}, drawn once per optimizer step from its own seeded generator, so the
    sequence does not depend on dropout or data order and can be checkpointed and resumed exactly."""

    def __init__(self, r_min: int, r_max: int, seed: int):
        if not 1 <= r_min <= r_max:
            raise ValueError(f"need 1 <= r_min <= r_max, got {r_min}..{r_max}")
        self.r_min, self.r_max = r_min, r_max
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> int:
        return int(torch.randint(self.r_min, self.r_max + 1, (1,), generator=self.generator))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def exportable_ranks(adapter_dir: Path) -> range:
    """Ranks an adapter folder can be exported at: 1..r_max for a dynamic adapter, else its one rank."""
    adapter_dir = Path(adapter_dir)
    meta = read_adapter_meta(adapter_dir)
    if meta and meta["dynamic"]:
        return range(1, meta["r_max"] + 1)
    rank = LoraConfig.from_pretrained(adapter_dir).r
    return range(rank, rank + 1)


def export_rank(adapter_dir: str | Path, rank: int, out_dir: str | Path) -> Path:
    """Write a standard PEFT adapter of rank `rank`: r=rank, lora_alpha=alpha, A[:rank], B[:, :rank].

    PEFT scales a rank-r adapter by lora_alpha / r, exactly the alpha / b that training used at b = rank,
    so `PeftModel.from_pretrained(base, out_dir)` reproduces the dynamic model at active rank `rank`. An adapter
    whose meta fixes the scale at alpha / r_max (qlora-svd) is written with lora_alpha = alpha * rank / r_max,
    so PEFT's lora_alpha / rank is that same alpha / r_max.
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    ranks = exportable_ranks(adapter_dir)
    if rank not in ranks:
        raise ValueError(f"rank {rank} is not exportable from {adapter_dir}: ranks {ranks.start}..{ranks.stop - 1}")
    config = LoraConfig.from_pretrained(adapter_dir)
    weights = load_file(adapter_dir / ADAPTER_WEIGHTS)
    sliced = {}
    for key, tensor in weights.items():
        if ".lora_A." in key:
            sliced[key] = tensor[:rank].contiguous()
        elif ".lora_B." in key:
            sliced[key] = tensor[:, :rank].contiguous()
        else:
            sliced[key] = tensor
    out_dir.mkdir(parents=True, exist_ok=True)
    config.r = rank
    fixed = scaling_rank(read_adapter_meta(adapter_dir))
    if fixed is not None:
        config.lora_alpha = config.lora_alpha * rank / fixed
    config.rank_pattern, config.alpha_pattern = {}, {}
    config.save_pretrained(out_dir)
    save_file(sliced, out_dir / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    return out_dir
