"""The dyrank model class for lm-evaluation-harness, registered in-process as "dyrank" (imports lm_eval, so
only evaluators/harness.py loads it, once the optional extra is known to be there)."""

from __future__ import annotations

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM


@register_model("dyrank")
class DyrankLM(HFLM):
    """HFLM on a model already in memory: a PeftModel whose active rank the caller switches between
    `simple_evaluate` calls, so many ranks share one base load. HFLM takes a loaded model as `pretrained`
    (it then reads device and config from it and loads nothing); a PeftModel forwards both to its base."""

    def __init__(self, model, tokenizer, batch_size: int = 8, max_length: int | None = None):
        super().__init__(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
                         max_length=max_length)
