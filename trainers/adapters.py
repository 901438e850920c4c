"""Attach a LoRA-family adapter to a loaded base: PEFT's LoRA for both methods, made dynamic for qdylora."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

from trainers.qdylora import attach_dynamic_rank, set_active_rank


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def attach_lora(
    model, *, rank: int, alpha: float, dropout: float, target_modules, dynamic: bool,
    update_mode: str = "cumulative", gradient_checkpointing: bool = True,
):
    """QLoRA recipe on a k-bit base (PEFT's prepare_model_for_kbit_training), then a rank-`rank` LoRA on
    the targets; with `dynamic`, every LoRA layer becomes rank-truncatable and starts at full rank."""
    if is_quantized(model):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
        bias="none", task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    if dynamic:
        attach_dynamic_rank(peft_model, update_mode=update_mode)
        set_active_rank(peft_model, rank)
    return peft_model
