"""What the PEFT-based methods share: QLoRA's preparation of the base, attaching a LoRA, finding its layers."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from trainers.dropout import use_uniform_dropout

ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's file name for an adapter's weights


def prepare_base(model, gradient_checkpointing: bool = True):
    """QLoRA's preparation of a base: every base weight frozen; with checkpointing, inputs that require grads so
    a frozen base still back-propagates to the adapters under recomputation.

    Unlike PEFT's prepare_model_for_kbit_training, nothing is upcast to fp32: on a 4-bit base the embedding,
    lm_head and norms stay in the compute dtype they were loaded in (the upcast made the embedding and lm_head
    cost 4 bytes a parameter and the whole residual stream fp32; P4 in docs/benchmarks.md). The norms still
    compute their statistics in fp32 inside (LlamaRMSNorm and its kin do), and the adapters' own weights are
    fp32 whatever the base (PEFT's autocast_adapter_dtype)."""
    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def attach_lora(model, *, rank: int, alpha: float, dropout: float, target_modules, dynamic: bool = False,
                update_mode: str = "cumulative", rank_application: str = "slice", gradient_checkpointing: bool = True,
                **lora_options):
    """QLoRA recipe on a k-bit base, then a rank-`rank` PEFT LoRA on the targets (extra LoraConfig options pass
    through, e.g. use_rslora); with `dynamic`, every LoRA layer becomes rank-truncatable (QDyLoRA) at full rank."""
    model = prepare_base(model, gradient_checkpointing)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        bias="none", task_type="CAUSAL_LM", **lora_options)
    peft_model = get_peft_model(model, config)
    use_uniform_dropout(peft_model)  # nn.Dropout's distribution, drawn faster (trainers/dropout.py)
    if dynamic:
        from trainers.methods.qdylora.model import attach_dynamic_rank, set_active_rank  # it builds on this module

        attach_dynamic_rank(peft_model, update_mode=update_mode, application=rank_application)
        set_active_rank(peft_model, rank)
    return peft_model


def lora_layers(model, adapter: str = "default"):
    """Every PEFT LoRA layer of `model` that holds `adapter`."""
    for module in model.modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            yield module
