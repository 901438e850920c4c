"""Peak accelerator memory of one training or evaluation actor, estimated from the model's config alone.

accelerate's `init_empty_weights` builds the model on the meta device (nothing is read or allocated), so
every parameter count below is exact; the bytes per parameter follow what our recipe really does:

  weights      NF4 linears: 4 bits + one uint8 absmax per 64 weights (+ fp32 per 256 absmaxes with double
               quantization); the rest (embeddings, norms, lm_head) stays in the compute dtype it loads in
               (trainers/adapters.py upcasts nothing). A 16/32-bit base keeps its load dtype everywhere.
  trainable    LoRA factors r * (d_in + d_out) per target linear, kept in fp32 by PEFT; same again for the
               gradients; AdamW keeps two fp32 moments (8-bit AdamW: two bytes; bitsandbytes keeps tensors
               under 4096 elements at 32 bits, which only matters for tiny models).
  activations  gradient checkpointing keeps each block's input (B*T*H) and recomputes one block at a time;
               at the loss, log-softmax output, its gradient and the logits' gradient are alive together
               (3 fp32 copies of B*T*V, whatever the logits' own dtype: measured 11.7-12.3 bytes per logit
               on an H100, bench/p4_memory.py); with training.loss_chunk_tokens only one chunk of tokens has
               logits at a time (trainers/loss.py). An NF4 matmul dequantizes its weight to the compute dtype
               for the duration of the call.

The block term counts what a Llama block saves for backward with LoRA (dropout > 0) on every linear:
about 25 tensors of the hidden size and 7 of the MLP size per token. The constants are checked against
measured peaks on a GPU in bench/gpu.py (P4; docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

GIB = 2**30
BLOCK_HIDDEN, BLOCK_MLP = 25, 7  # tensors a recomputed block keeps alive, per token (see docstring)


@dataclass(frozen=True)
class ModelShape:
    quantizable: int  # parameters of linears inside the blocks (what bitsandbytes turns into NF4)
    linear_dims: tuple[tuple[int, int], ...]  # (d_out, d_in) of each of those linears (GaLore projects them)
    other: int  # every other parameter, tied ones once
    largest_linear: int
    lora_per_rank: int  # sum of d_in + d_out over the LoRA targets: LoRA parameters = rank * this
    hidden: int
    intermediate: int
    layers: int
    vocab: int


@dataclass(frozen=True)
class MemoryEstimate:
    role: str
    weights: int
    trainable: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.gradients + self.optimizer + self.activations

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def _targets(name: str, target_modules) -> bool:
    if target_modules == "all-linear":
        return True
    return any(name == t or name.endswith("." + t) for t in target_modules)


def model_shape(model_config, target_modules="all-linear") -> ModelShape:
    """Exact parameter counts of the architecture in `model_config`, from an empty (meta) model."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(model_config)
    model.tie_weights()  # meta initialisation skips tying: an untied copy would count the embedding twice
    output = model.get_output_embeddings()
    quantizable = largest = lora = 0
    dims = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not output:
            quantizable += module.weight.numel()
            largest = max(largest, module.weight.numel())
            dims.append((module.out_features, module.in_features))
            if _targets(name, target_modules):
                lora += module.in_features + module.out_features
    total = sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once
    return ModelShape(quantizable=quantizable, linear_dims=tuple(dims), other=total - quantizable, largest_linear=largest, lora_per_rank=lora,
                      hidden=model_config.hidden_size, intermediate=getattr(model_config, "intermediate_size", 4 * model_config.hidden_size),
                      layers=model_config.num_hidden_layers, vocab=model_config.vocab_size)


def nf4_bytes(numel: int, double_quant: bool) -> int:
    absmax = numel // 64 + (numel // 64 // 256) * 4 if double_quant else (numel // 64) * 4
    return numel // 2 + absmax


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def estimate_training(shape: ModelShape, *, rank: int, batch: int, seq: int, load_in_4bit: bool,
                      compute_dtype: torch.dtype, base_dtype: torch.dtype | None = None, double_quant: bool = True,
                      optimizer: str = "paged_adamw_32bit", gradient_checkpointing: bool = True,
                      loss_chunk_tokens: int = 0, role: str = "trainer") -> MemoryEstimate:
    """One training actor: a LoRA-family adapter of `rank` on the base, one micro-batch of batch x seq; the loss
    over `loss_chunk_tokens` tokens at a time (0: the model's own loss, all tokens at once)."""
    if load_in_4bit:
        act = dtype_bytes(compute_dtype)  # embedding and norms stay in the compute dtype: so does the residual stream
        weights = nf4_bytes(shape.quantizable, double_quant) + shape.other * act
        transient = shape.largest_linear * act
    else:
        act = dtype_bytes(base_dtype or compute_dtype)
        weights = (shape.quantizable + shape.other) * act
        transient = 0
    lora = rank * shape.lora_per_rank
    states = 2 if optimizer == "paged_adamw_8bit" else 8
    tokens = batch * seq
    block = tokens * (BLOCK_HIDDEN * shape.hidden + BLOCK_MLP * shape.intermediate) * act
    if loss_chunk_tokens:  # one chunk's logits, plus the scored tokens' hidden states gathered for the lm_head
        loss = min(tokens, loss_chunk_tokens) * shape.vocab * 12 + tokens * shape.hidden * act
    else:
        loss = tokens * shape.vocab * 12
    if gradient_checkpointing:
        activations = shape.layers * tokens * shape.hidden * act + max(block + transient, loss)
    else:
        activations = shape.layers * block + loss + transient
    return MemoryEstimate(role, weights, lora * 4, lora * 4, lora * states, activations)


def estimate_evaluation(shape: ModelShape, *, rank: int, batch: int, seq: int, load_in_4bit: bool,
                        compute_dtype: torch.dtype, dequantize: bool, double_quant: bool = True,
                        role: str = "evaluator") -> MemoryEstimate:
    """One evaluator actor: the base (dequantized once, or NF4), a rank-`rank` adapter, a no-grad forward."""
    compute = dtype_bytes(compute_dtype)
    if load_in_4bit and not dequantize:
        weights = nf4_bytes(shape.quantizable, double_quant) + shape.other * compute
        transient = shape.largest_linear * compute
    else:
        weights = (shape.quantizable + shape.other) * (compute if load_in_4bit else 4)
        transient = 0
    tokens = batch * seq
    # no graph is kept: a few block-sized tensors at a time, and the logits with their log-softmax in fp32
    forward = tokens * (4 * shape.hidden + 3 * shape.intermediate) * compute + transient
    loss = tokens * shape.vocab * (compute + 8)
    return MemoryEstimate(role, weights, rank * shape.lora_per_rank * 4, 0, 0, max(forward, loss))


def estimate_job_training(shape: ModelShape, job, *, rank: int, role: str) -> MemoryEstimate:
    """`estimate_training` for one job config: its base, compute dtype, optimizer and batch."""
    from trainers.models import base_dtype, resolve_compute_dtype

    q, t = job.quantization, job.training
    return estimate_training(shape, rank=rank, batch=t.batch_size, seq=job.data.max_seq_len, load_in_4bit=q.load_in_4bit,
                             compute_dtype=resolve_compute_dtype(q.compute_dtype), base_dtype=base_dtype(job),
                             double_quant=q.double_quant, optimizer=t.optimizer,
                             gradient_checkpointing=t.gradient_checkpointing,
                             loss_chunk_tokens=t.loss_chunk_tokens, role=role)
