"""The one training recipe every method shares (trainers/methods: qdylora, dylora, qlora, lora, adalora,
bitlora, galore, galore8bit); a method changes only what its verbs do (attach, optimizer, step hook, save).

Read top to bottom: setup (base, method, data, optimizer), train (for the dynamic methods one sampled rank
per optimizer step, shared by all its micro-batches), save (weights, metrics), with checkpoints along the
way. Every run records the same costs: trainable parameters, bytes saved, peak memory, device seconds and
seconds per step (trainers/memory.py says how memory is measured on each device). It reads a
`trainers.config.JobConfig` and imports nothing from the orchestrator, Ray or MLflow: progress reaches
callers through `on_step`, so a Ray actor can forward it and a bare GPU box can just print it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from trainers import checkpoint as ckpt
from trainers.atomic import fsync_tree, read_jsonl_log, write_atomic, write_json_atomic
from trainers.batching import BatchSchedule, collate, encode_all
from trainers.config import JobConfig
from trainers.costs import TrainingCosts
from trainers.datasets.splits import load_splits
from trainers.memory import PeakMemory, folder_bytes
from trainers.methods import make_trainer
from trainers.methods.base import trainable_params
from trainers.methods.qdylora import RankSampler, set_active_rank
from trainers.models import (base_dtype, default_device, load_base_model, load_tokenizer, quant_settings, resolve_base,
                             resolve_compute_dtype)
from trainers.validation_probe import ValidationProbe

ADAPTER_DIR, METRICS_FILE, CHECKPOINT_DIR, SUMMARY_FILE = "adapter", "metrics.jsonl", "checkpoints", "train_summary.json"
ARTIFACTS_FILE = "method_artifacts.json"


@dataclass
class TrainResult:
    out_dir: Path
    adapter_dir: Path
    steps: int
    final_loss: float
    device_seconds: float
    resumed_from: int = 0  # the checkpoint step this run continued from (0: started fresh)
    costs: TrainingCosts = TrainingCosts()  # what the run cost, the same record for every method


class FinetuneRecipe:
    def __init__(self, cfg: JobConfig, out_dir: str | Path, on_step: Callable[[dict], None] | None = None,
                 progress: bool = True):
        self.cfg, self.out_dir, self.on_step, self.progress = cfg, Path(out_dir), on_step, progress
        self.device = default_device()
        self.method = make_trainer(cfg.adapter.method)
        self.memory = PeakMemory(self.device)

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, a, t = self.cfg, self.cfg.adapter, self.cfg.training
        splits = load_splits(cfg.data)  # first: bad data is reported before a model loads
        self.memory.start()  # from before the base loads: a 4-bit and a 16-bit base differ right there
        self.base_path = resolve_base(cfg.model.source)
        self.tokenizer = load_tokenizer(self.base_path, cfg.model.trust_remote_code)
        torch.manual_seed(t.seed)  # adapter init and dropout draw from here
        base = load_base_model(self.base_path, quant_settings(cfg), base_dtype(cfg),
                               trust_remote_code=cfg.model.trust_remote_code, device=self.device)
        self.model = self.method.attach(base, cfg)
        self.sampler = RankSampler(a.r_min, a.r_max, seed=t.seed + 1) if a.dynamic and a.spec.samples_rank else None
        self.train_examples = encode_all(splits["train"], self.tokenizer, cfg.data.max_seq_len, cfg.data.packing)
        self.probe = ValidationProbe(cfg, splits["validation"], self.tokenizer) if t.eval_every else None
        self.schedule = BatchSchedule(len(self.train_examples), t.batch_size, t.seed)
        self.optimizer = self.method.build_optimizer(self.model, cfg)
        # Mixed precision as a standard QLoRA recipe runs it (Trainer's bf16=True / fp16=True): the forward, the
        # LoRA branch, lm_head and loss under autocast in the compute dtype, adapter weights and optimizer states
        # in fp32; fp16 (GPUs without bf16, e.g. the V100) adds loss scaling so small gradients do not flush to 0.
        self.compute_dtype = resolve_compute_dtype(cfg.quantization.compute_dtype)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.compute_dtype == torch.float16)
        self.scheduler = get_scheduler(
            "constant_with_warmup" if t.lr_scheduler == "constant" else t.lr_scheduler, self.optimizer,
            num_warmup_steps=math.ceil(t.warmup_ratio * t.max_steps), num_training_steps=t.max_steps,
        )
        self.start_step = 0
        latest = ckpt.latest_valid_checkpoint(self.out_dir / CHECKPOINT_DIR)  # skips (and warns about) bad ones
        if latest is not None:
            self.start_step = ckpt.load_checkpoint(latest, self.model, self.optimizer, self.scheduler, self.sampler,
                                                   self.method)
        self._truncate_metrics(self.start_step)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metrics logged after the checkpoint we resume from (those steps will be trained again),
        and a last line torn by a kill mid-write (dropped with a warning)."""
        path = self.out_dir / METRICS_FILE
        if path.exists():
            kept = [row for row in read_jsonl_log(path) if row["step"] <= step]
            write_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))

    # ---- train -------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        t = self.cfg.training
        started = time.perf_counter()
        rank = self.sampler.sample() if self.sampler else self.cfg.adapter.full_rank
        if self.sampler:
            set_active_rank(self.model, rank)  # once per optimizer step, never inside forward
        total = 0.0
        for micro in range(t.grad_accum_steps):
            ids = self.schedule.indices(step * t.grad_accum_steps + micro)
            batch = collate([self.train_examples[i] for i in ids], self.tokenizer.pad_token_id)
            with self.autocast():
                batch = {k: v.to(self.device) for k, v in batch.items()}
                loss = self.method.training_loss(self.model, batch, self.cfg) / t.grad_accum_steps
            self.scaler.scale(loss).backward()
            total += loss.item()
        self.scaler.unscale_(self.optimizer)  # clip the true gradients (a no-op without fp16 loss scaling)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], t.max_grad_norm
        )
        lr = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)  # skipped (and the scale lowered) if fp16 gradients overflowed
        self.scaler.update()
        self.method.after_optimizer_step(self.model, step + 1)  # AdaLoRA: after step(), before zero_grad()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so the step time is the step's, not the launch's
        return {"step": step + 1, "train_loss": total, "rank": rank, "lr": lr, "grad_norm": float(grad_norm),
                "step_seconds": time.perf_counter() - started}

    def autocast(self):
        """The forward's mixed-precision context: autocast to the compute dtype, off when that is fp32."""
        return torch.autocast(self.device.type, dtype=self.compute_dtype,
                              enabled=self.compute_dtype != torch.float32)

    def train(self) -> TrainResult:
        t = self.cfg.training
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model.train()
        started, last, step_times = time.perf_counter(), {"train_loss": float("nan")}, []
        bar = tqdm(range(self.start_step, t.max_steps), initial=self.start_step, total=t.max_steps,
                   desc=f"{self.cfg.adapter.method} train", disable=not self.progress, dynamic_ncols=True)
        with (self.out_dir / METRICS_FILE).open("a") as metrics:
            for step in bar:
                last = self.train_step(step)
                step_times.append(last["step_seconds"])
                if self.probe is not None and self.probe.due(last["step"]):
                    # No autocast here: the probe scores as the evaluators do, so its values are theirs.
                    last.update(self.probe.score(self.model))  # val_loss_r<rank>, after the step's timing
                metrics.write(json.dumps(last) + "\n")
                metrics.flush()
                if self.on_step:
                    self.on_step(last)
                if last["step"] % t.log_every == 0:
                    bar.set_postfix(loss=f"{last['train_loss']:.4f}", rank=last["rank"])
                if last["step"] % t.checkpoint_every == 0 and last["step"] < t.max_steps:
                    ckpt.save_checkpoint(self.out_dir / CHECKPOINT_DIR, last["step"], self.model, self.optimizer,
                                         self.scheduler, self.sampler, t.keep_checkpoints, self.method)
        seconds = time.perf_counter() - started
        peak = self.memory.peak_bytes(self.optimizer)
        adapter_dir = self.save()
        timed = step_times[1:] or step_times  # the first step pays one-off costs (allocations, SVDs, compiles)
        costs = TrainingCosts(trainable_params=trainable_params(self.model), adapter_bytes=folder_bytes(adapter_dir),
                              peak_memory_bytes=peak, peak_memory_kind=self.memory.kind, device_seconds=seconds,
                              step_seconds=sum(timed) / len(timed) if timed else float("nan"))
        summary = {"steps": t.max_steps, "resumed_from": self.start_step, "final_loss": last["train_loss"],
                   "device": str(self.device), "method": self.method.name, "saved_dir": adapter_dir.name,
                   **asdict(costs)}
        fsync_tree(adapter_dir)  # the summary says "finished": what it points at must be on disk first
        write_json_atomic(self.out_dir / SUMMARY_FILE, summary)
        return TrainResult(self.out_dir, adapter_dir, t.max_steps, last["train_loss"], seconds, self.start_step, costs)

    # ---- save --------------------------------------------------------------------------------------
    def save(self) -> Path:
        """What the method saves (an adapter; the full weights for GaLore), plus its records (artifacts)."""
        saved = self.method.save(self.model, self.cfg, self.out_dir / self.method.saved_dir)
        artifacts = self.method.artifacts(self.model, self.cfg)
        if artifacts:
            write_json_atomic(self.out_dir / ARTIFACTS_FILE, artifacts)
        return saved


def finished_result(out_dir: str | Path) -> TrainResult | None:
    """The result of a run that already finished in out_dir, read from disk; None if it did not finish."""
    out_dir = Path(out_dir)
    summary_path = out_dir / SUMMARY_FILE
    if not summary_path.exists():
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        costs = TrainingCosts.from_dict(summary)
        return TrainResult(out_dir, out_dir / summary.get("saved_dir", ADAPTER_DIR), summary["steps"],
                           summary["final_loss"], summary["device_seconds"], summary["resumed_from"], costs)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # truncated or edited by hand
        raise ValueError(f"{summary_path}: not a dyrank training summary ({type(exc).__name__}: {exc}); "
                         "move it aside to train again") from None


def train(cfg: JobConfig, out_dir: str | Path, on_step=None, progress: bool = True) -> TrainResult:
    """Train into out_dir, resuming from its last checkpoint; a run that already finished is not redone."""
    done = finished_result(out_dir)
    if done is not None and done.steps == cfg.training.max_steps:
        return done
    recipe = FinetuneRecipe(cfg, out_dir, on_step=on_step, progress=progress)
    recipe.setup()
    return recipe.train()
