"""PEFT's AdaLoRA: SVD-shaped adapters (P diag(E) Q) whose total rank budget is pruned during training.

PEFT leaves two things to the training loop, both done here through the recipe's verbs:
`update_and_allocate(global_step)` after every `optimizer.step()` and before `zero_grad()` (it reads the
gradients to score importance), and a loss computed by the model from `labels` (AdaLoRA's forward adds
its orthogonality regulariser only to a loss it computed itself; the recipe always passes labels).
"""

from __future__ import annotations

import logging

from peft import AdaLoraConfig, get_peft_model

from trainers.adapters import prepare_base
from trainers.methods.base import TrainingMethod

_log = logging.getLogger("dyrank.adalora")


class AdaLoraMethod(TrainingMethod):
    def attach(self, base, job):
        a, s = job.adapter, job.adapter.adalora
        base = prepare_base(base, job.training.gradient_checkpointing)
        config = AdaLoraConfig(
            init_r=s.init_r, target_r=a.rank, tinit=s.tinit, tfinal=s.tfinal, deltaT=s.delta_t, beta1=s.beta1,
            beta2=s.beta2, orth_reg_weight=s.orth_reg_weight, total_step=job.training.max_steps,
            lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=a.target_modules, task_type="CAUSAL_LM",
        )
        return get_peft_model(base, config)

    def training_loss(self, model, batch: dict, job):
        """The model's own loss: AdaLoRA's forward adds its orthogonality regulariser to it."""
        return model(**batch).loss

    def after_optimizer_step(self, model, step: int) -> None:
        # 1-based: the last step equals total_step - tfinal when tfinal is 0, which fixes the final budget
        model.base_model.update_and_allocate(step)

    # The RankAllocator's running importance scores steer every later allocation, and the rank pattern is what
    # the steps after total_step - tfinal re-apply: both live outside the weights, so checkpoints carry them.
    def state_dict(self, model) -> dict:
        allocator = model.base_model.rankallocator
        return {"ipt": dict(allocator.ipt), "exp_avg_ipt": dict(allocator.exp_avg_ipt),
                "exp_avg_unc": dict(allocator.exp_avg_unc),
                "rank_pattern": model.peft_config["default"].rank_pattern}

    def load_state_dict(self, model, state: dict | None) -> None:
        if state is None:
            _log.warning("this checkpoint predates AdaLoRA state in checkpoints: the importance scores restart "
                         "from zero and the resumed run is not identical to an uninterrupted one")
            return
        allocator = model.base_model.rankallocator
        devices = {name: p.device for name, p in model.base_model.model.named_parameters()}
        for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(allocator, key, {n: t.to(devices[n]) for n, t in state.get(key, {}).items()})
        model.peft_config["default"].rank_pattern = state.get("rank_pattern")

    # save: the base class's; PEFT's save_pretrained drops the pruned ranks (rank_pattern)

    def artifacts(self, model, job) -> dict[str, object]:
        """Ranks kept per adapted layer after the final allocation (init_r before any pruning)."""
        pattern = model.peft_config["default"].rank_pattern
        if not pattern:
            init = job.adapter.adalora.init_r
            return {"rank_allocation": {name: init for name, _ in _svd_layers(model)}}
        return {"rank_allocation": {name.removeprefix("base_model.model.").removesuffix(".lora_E"): int(sum(mask))
                                    for name, mask in pattern.items()}}

    def estimate_memory(self, shape, job, role: str):
        """AdaLoRA starts every layer at init_r and prunes from there: the peak is at init_r."""
        from trainers.memory_estimate import estimate_job_training

        return estimate_job_training(shape, job, rank=job.adapter.adalora.init_r, role=role)


def _svd_layers(model):
    from peft.tuners.adalora import AdaLoraLayer

    for name, module in model.named_modules():
        if isinstance(module, AdaLoraLayer):
            yield name.removeprefix("base_model.model."), module
