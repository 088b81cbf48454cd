"""The distillation loss of one micro-batch (``distill.training.trainer.DistillTrainer.compute_loss`` calls it).

CE(assistant tokens) + kl_weight * KL(soft target || model over candidates), with the model's output layer
computed only at the positions the loss reads (transformers' ``logits_to_keep``): with a large vocabulary
(SmolLM2: 49k tokens) the output layer over every position is most of a step's time and memory.
"""
from __future__ import annotations

import torch

from distill.training.chat_dataset import ChatBatch


# --------------------------------------------------------------------------------------------------
def next_token_log_probs(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                         positions: torch.Tensor | None = None):
    """log p(token t+1 | tokens <= t) for every (row, t) with mask[row, t+1].
    logits [R, T, V] (or [R, K, V] at sequence ``positions`` [K] only), input_ids/mask [R, T]
    -> (log_probs [N] float32, rows [N])."""
    predicted = mask[:, 1:]  # [R, T-1] the token at t+1 is predicted from position t
    tokens = input_ids[:, 1:]
    if positions is None:
        logits = logits[:, :-1]
    else:
        predicted, tokens = predicted[:, positions], tokens[:, positions]
    selected = logits[predicted].float()  # [N, V] only the positions that matter
    tokens = tokens[predicted]  # [N]
    log_probs = selected.gather(-1, tokens[:, None]).squeeze(-1) - selected.logsumexp(-1)
    return log_probs, predicted.nonzero()[:, 0]


_KEEPS_LOGITS: dict = {}  # type(model) -> whether its forward takes logits_to_keep as a tensor of positions


def loss_logits(model, batch: ChatBatch):
    """(logits, positions): the model's logits at the positions the loss reads (those predicting a target
    or candidate token, over all rows) where the model can skip the rest (transformers' ``logits_to_keep``;
    the output projection of a large vocabulary is then computed at a few positions instead of all); else
    every position's logits and None."""
    needed = (batch.target_mask[:, 1:] | batch.candidate_mask[:, 1:]).any(0)  # [T-1]
    needed[batch.inline_position] = True
    positions = needed.nonzero()[:, 0]
    kind = type(model)
    if _KEEPS_LOGITS.get(kind, True) and 0 < len(positions) < needed.numel():
        try:
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           logits_to_keep=positions).logits
        except TypeError:  # a forward without logits_to_keep
            _KEEPS_LOGITS[kind] = False
        else:
            if logits.shape[1] == len(positions):
                _KEEPS_LOGITS[kind] = True
                return logits, positions
            _KEEPS_LOGITS[kind] = False  # ignored the argument: use the full logits it gave
            return logits, None
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, None


def candidate_kl(log_probs, rows, num_rows: int, candidate_row, target_probs) -> torch.Tensor:
    """Sum over soft targets of KL(target || softmax over candidates of their summed token log-probs).
    candidate_row/target_probs [G, K] (row -1 = padding)."""
    scores = torch.zeros(num_rows, dtype=log_probs.dtype, device=log_probs.device).index_add(0, rows, log_probs)
    valid = candidate_row >= 0  # [G, K]
    return _kl_sum(scores[candidate_row.clamp(min=0)], valid, target_probs)


def inline_kl(logits, positions, batch: ChatBatch) -> torch.Tensor:
    """candidate_kl for the soft targets whose candidates are single tokens (``batch.inline_*``): candidate
    k's score is the next-token log-prob of its token at the position before the answer, on the
    conversation's own row."""
    columns = batch.inline_position if positions is None else torch.searchsorted(positions, batch.inline_position)
    next_log_probs = logits[batch.inline_row, columns].float().log_softmax(-1)  # [H, V]
    valid = batch.inline_tokens >= 0  # [H, K]
    return _kl_sum(next_log_probs.gather(-1, batch.inline_tokens.clamp(min=0)), valid, batch.inline_probs)


def _kl_sum(scores, valid, target_probs) -> torch.Tensor:
    """Sum over groups of KL(target || softmax over a group's valid candidate scores); all [G, K]."""
    model_log_probs = torch.where(valid, scores, float("-inf")).log_softmax(-1)
    terms = torch.xlogy(target_probs, target_probs) - target_probs * model_log_probs.masked_fill(~valid, 0.0)
    return terms.sum()


def micro_batch_loss(model, batch: ChatBatch, step_targets: int, step_soft_targets: int, kl_weight: float,
                     choice_parts: torch.Tensor | None = None):
    """Loss whose gradients, summed over a step's micro-batches, are those of the step-mean loss.
    Returns (loss, sft part, kl part).  ``choice_parts`` (float64 [2]), if given, gains the summed negative
    log-likelihood of the batch's choice tokens (``ChatBatch.choice_mask``) and their number: a diagnostic."""
    logits, positions = loss_logits(model, batch)  # [R, T or K, V]
    log_probs, _ = next_token_log_probs(logits, batch.input_ids, batch.target_mask, positions)
    if choice_parts is not None and batch.choice_mask.numel():
        predicted = batch.target_mask[:, 1:] if positions is None else batch.target_mask[:, 1:][:, positions]
        chosen = batch.choice_mask[:, 1:] if positions is None else batch.choice_mask[:, 1:][:, positions]
        is_choice = chosen[predicted]  # [N], aligned with log_probs
        choice_parts += torch.tensor([-float(log_probs.detach()[is_choice].sum()), float(is_choice.sum())],
                                     dtype=torch.float64)
    sft = -log_probs.sum() / step_targets
    kl = logits.new_zeros((), dtype=torch.float32)
    if kl_weight > 0 and batch.candidate_row.numel():
        cand_log_probs, rows = next_token_log_probs(logits, batch.input_ids, batch.candidate_mask, positions)
        kl = kl + candidate_kl(cand_log_probs, rows, len(batch.input_ids), batch.candidate_row, batch.target_probs)
    if kl_weight > 0 and batch.inline_row.numel():
        kl = kl + inline_kl(logits, positions, batch)
    kl = kl / step_soft_targets
    return sft + kl_weight * kl, sft.detach(), kl.detach()
