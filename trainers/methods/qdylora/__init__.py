"""QDyLoRA: one LoRA adapter of rank r_max, trained so that every rank r_min..r_max works (DyLoRA on QLoRA's
4-bit base). Built on PEFT's LoRA layers (fp and bitsandbytes 4-bit alike): only the two factor modules of
each layer are swapped for rank-truncating ones; the rest of PEFT (dropout, dtype casts, saving) is untouched.

The stable public API, for dyrank and for other training loops:

    from trainers.methods.qdylora import attach_dynamic_rank, set_active_rank, RankSampler, export_rank

    attach_dynamic_rank(peft_model)            # every LoRA layer of a PEFT model becomes rank-truncatable
    sampler = RankSampler(r_min, r_max, seed)  # b ~ Uniform{r_min..r_max}, checkpointable
    set_active_rank(peft_model, sampler.sample())   # once per optimizer step: A[:b], B[:, :b], alpha / b
    export_rank(adapter_dir, b, out_dir)       # a plain PEFT adapter of rank b
    merge_at_rank(peft_model, b)               # the base with exactly the rank-b update merged in

Under a Hugging Face / TRL Trainer instead of dyrank's loop (trainers/methods/qdylora/callback.py):

    Trainer(..., callbacks=[DynamicRankCallback(r_min=1)])   # one rank per optimizer step, logged
    save_dynamic_adapter(peft_model, out_dir, r_min=1)        # adapter + rank range for `dyrank export`

The names load lazily (PEP 562), so registering the method below imports no torch.
"""

from trainers.methods import MethodSpec, register_method

_API = {
    "DynamicRankCallback": "trainers.methods.qdylora.callback",
    "save_dynamic_adapter": "trainers.methods.qdylora.callback",
    "RankTruncatedLinear": "trainers.methods.qdylora.layer",
    "RankSampler": "trainers.methods.qdylora.model",
    "attach_dynamic_rank": "trainers.methods.qdylora.model",
    "export_rank": "trainers.methods.qdylora.model",
    "exportable_ranks": "trainers.methods.qdylora.model",
    "get_active_rank": "trainers.methods.qdylora.model",
    "merge_at_rank": "trainers.methods.qdylora.merge",
    "set_active_rank": "trainers.methods.qdylora.model",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_method(MethodSpec(
    name="qdylora", label="QDyLoRA", trainer="trainers.methods.qdylora.method:DynamicLoraMethod", base="config",
    rank_dynamic=True, summary="DyLoRA on the 4-bit base: one adapter, every rank r_min..r_max usable",
))
