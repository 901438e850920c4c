"""The loss on one fixed batch, taken before and after training: unlike the first and last training losses (each
on a different batch), it moves only if the weights learned something."""

from __future__ import annotations

import torch

from trainers.batching import collate
from trainers.methods.qdylora import set_active_rank


def fixed_batch_loss(recipe) -> float:
    """Loss of the recipe's model on its first training batch, dropout off, at the adapter's full rank."""
    model, cfg = recipe.model, recipe.cfg
    if recipe.sampler:
        set_active_rank(model, cfg.adapter.r_max)
    batch = collate(recipe.train_examples[: cfg.training.batch_size], recipe.tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = model(**{k: v.to(recipe.device) for k, v in batch.items()}).loss.item()
    model.train(was_training)
    return loss
