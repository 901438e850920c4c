"""QDyLoRA under any Hugging Face `Trainer` (or TRL's `SFTTrainer`, which is one): a callback that samples
one rank per optimizer step, and a save helper that writes what `dyrank export` needs beside the adapter.

    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    attach_dynamic_rank(model)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[DynamicRankCallback(r_min=1)])
    trainer.train()
    save_dynamic_adapter(model, "out/adapter", r_min=1)     # then: dyrank export out/adapter --rank 4 --out r4

Why `on_step_begin`: transformers' inner loop calls it once per optimizer step, before the first of that
step's gradient-accumulation micro-batches (`step % gradient_accumulation_steps == 0`), and calls
`on_substep_end` between micro-batches, so a rank set there holds for every micro-batch of the step.
`on_step_end` comes after `optimizer.step()` and before logging, saving and evaluation: the callback puts
the model back at full rank there, so evaluations and checkpoints see r_max, never a leftover sampled rank.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from trainers.methods.base import write_adapter_meta
from trainers.methods.qdylora.model import RankSampler, set_active_rank

RANK_LOG_KEY = "active_rank"


def _lora_config(model, adapter: str):
    config = getattr(model, "peft_config", {}).get(adapter)
    if config is None:
        raise ValueError(f"the model has no PEFT adapter {adapter!r}; wrap it with get_peft_model first")
    return config


def save_dynamic_adapter(model, out_dir: str | Path, r_min: int = 1, adapter: str = "default",
                         method: str = "qdylora") -> Path:
    """The full adapter (safetensors) plus `dyrank_adapter.json`, the rank range `dyrank export` and
    `dyrank harness` read; r_max and alpha come from the model's LoraConfig."""
    config = _lora_config(model, adapter)
    if not 1 <= r_min <= config.r:
        raise ValueError(f"r_min {r_min} is outside 1..{config.r} (the adapter's rank)")
    out_dir = Path(out_dir)
    set_active_rank(model, config.r, adapter)
    model.save_pretrained(out_dir, safe_serialization=True)
    write_adapter_meta(out_dir, {"method": method, "dynamic": True, "r_min": r_min, "r_max": config.r,
                                 "lora_alpha": config.lora_alpha})
    return out_dir


class DynamicRankCallback(TrainerCallback):
    """b ~ Uniform{r_min..r_max} once per optimizer step (RankSampler, seeded), applied with set_active_rank.

    `ranks` holds the rank of every step this process trained (step k always gets the seed's k-th draw, resumed
    or not); each log row gets `active_rank` (the rank of the step just logged),
    in the logs other callbacks see after this one and in `state.log_history`. Checkpoints written by the
    Trainer get `dyrank_adapter.json`, so `dyrank export CHECKPOINT --rank R` works on them directly.
    """

    def __init__(self, r_min: int = 1, r_max: int | None = None, seed: int = 0, adapter: str = "default"):
        self.r_min, self.r_max, self.seed, self.adapter = r_min, r_max, seed, adapter
        self.sampler: RankSampler | None = None
        self.ranks: list[int] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.r_max = self.r_max or _lora_config(model, self.adapter).r
        self.sampler = RankSampler(self.r_min, self.r_max, self.seed)
        # One draw per optimizer step, so step k always trains the k-th draw: a run resumed from a checkpoint
        # (the Trainer restores state.global_step before this call) skips the draws of the steps already done
        # and continues the same rank sequence as a run that was never interrupted.
        for _ in range(state.global_step):
            self.sampler.sample()

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        rank = self.sampler.sample()
        set_active_rank(model, rank, self.adapter)
        self.ranks.append(rank)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        set_active_rank(model, self.r_max, self.adapter)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.ranks and logs is not None and "loss" in logs:
            logs[RANK_LOG_KEY] = self.ranks[-1]
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1][RANK_LOG_KEY] = self.ranks[-1]

    def on_save(self, args, state, control, model=None, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and (folder / "adapter_config.json").is_file():
            config = _lora_config(model, self.adapter)
            write_adapter_meta(folder, {"method": "qdylora", "dynamic": True, "r_min": self.r_min,
                                        "r_max": config.r, "lora_alpha": config.lora_alpha})


