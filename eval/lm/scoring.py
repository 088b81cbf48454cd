"""Log-probabilities of candidate answers in multi-round dialogues under a causal LM, two ways.

A candidate's score is the summed log-probability of its tokens, where its tokens are the assistant
segment of ``tokenize_chat(tokenizer, messages + [{"role": "assistant", "content": candidate}])``: what
follows the generation prompt, end-of-turn marker included.

* ``candidate_logprobs_kv`` encodes each round's prompt once, scores all candidates of the round in one
  batched forward from a copy of the cached prompt, and carries the cache to the next round by encoding
  only the new tokens.  Several dialogues go through together: their new tokens are left-padded and the
  padding stays in the cache as masked "holes", with explicit position ids per row.
* ``candidate_logprobs_naive`` re-encodes prompt + candidate from scratch for every candidate (the
  baseline the cached path must reproduce).
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch

from eval.text.chat_format import ChatTemplateError, chat_segments, encode_segment, tokenize_chat

# How much memory one candidate forward may use for its logits and its copy of the cache.
DEFAULT_MEMORY_BUDGET_BYTES = 1 << 30


@dataclass
class RoundRequest:
    """One round to score: the conversation up to and including this round's user turn, and the assistant
    answers to score, one per option (e.g. "The best option is Flight 2.")."""

    messages: list[dict]
    candidates: list[str]


@dataclass
class DialogueRequest:
    """The rounds of one dialogue; round r+1's messages extend round r's (answer + new user turn)."""

    rounds: list[RoundRequest]


@dataclass
class RoundIds:
    """Token ids of one round: the prompt (conversation + generation prompt) and each candidate's tokens."""

    prompt: list[int]
    candidates: list[list[int]]


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Ids of the conversation followed by the generation prompt: exactly the prefix that precedes an
    assistant answer in ``tokenize_chat(messages + [answer])``."""
    segments = chat_segments(tokenizer, list(messages) + [{"role": "assistant", "content": ""}])
    return [token for segment in segments[:-1] for token in encode_segment(tokenizer, segment.text)]


def round_ids(tokenizer, request: RoundRequest) -> RoundIds:
    """The prompt ids and candidate ids of a round, per the score definition (see module docstring)."""
    prompt: list[int] | None = None
    candidates = []
    for candidate in request.candidates:
        ids, assistant_mask = tokenize_chat(tokenizer, list(request.messages) + [{"role": "assistant", "content": candidate}])
        n_prompt = len(ids)
        while n_prompt > 0 and assistant_mask[n_prompt - 1]:
            n_prompt -= 1
        if prompt is None:
            prompt = ids[:n_prompt]
        elif ids[:n_prompt] != prompt:
            raise ChatTemplateError("the prompt tokens change with the candidate answer; cannot score candidates")
        candidates.append(ids[n_prompt:])
    if not prompt:
        raise ValueError("a round needs a non-empty prompt (messages) and at least one candidate")
    return RoundIds(prompt, candidates)


def dialogue_ids(tokenizer, dialogue: DialogueRequest) -> list[RoundIds]:
    rounds = [round_ids(tokenizer, request) for request in dialogue.rounds]
    if len({len(r.candidates) for r in rounds}) > 1:
        raise ValueError("every round of a dialogue must have the same number of candidates")
    return rounds


@dataclass
class ModelCall:
    """How to call a (possibly PEFT-wrapped) causal LM forward: the name of its cache argument ("cache" in
    transformers >= 5.x, "past_key_values" before) and whether it can return only the last logits."""

    model: torch.nn.Module
    cache_kwarg: str
    has_logits_to_keep: bool
    pad_id: int
    forwarded_tokens: int = 0  # real (unpadded) tokens sent through the model so far, for benchmarks

    @classmethod
    def of(cls, model, pad_id: int) -> "ModelCall":
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        parameters = inspect.signature(base.forward).parameters
        cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        return cls(model, cache_kwarg, "logits_to_keep" in parameters, pad_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def logits(self, input_ids, attention_mask, position_ids, cache=None, keep_last: int = 0):
        """Logits [batch, seq, vocab] (only the last ``keep_last`` positions if > 0) of a forward that
        appends to ``cache`` if given."""
        kwargs = {self.cache_kwarg: cache, "use_cache": cache is not None}
        self.forwarded_tokens += int(attention_mask[:, -input_ids.shape[1]:].sum())
        if keep_last and self.has_logits_to_keep:
            kwargs["logits_to_keep"] = keep_last
        device = self.device
        output = self.model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device=device, dtype=torch.long),
            position_ids=position_ids.to(device),
            **kwargs,
        )
        return output.logits[:, -keep_last:] if keep_last else output.logits

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def cache_is_reusable(self) -> tuple[bool, bool]:
        """(KV reuse supported, has sliding-window layers): reuse needs plain dynamic attention layers."""
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        layers = self.new_cache().layers
        supported = all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)
        return supported, any(type(layer) is DynamicSlidingWindowLayer for layer in layers)


def _select_cache_rows(cache, index: torch.Tensor):
    """A new cache whose row i is row ``index[i]`` of ``cache`` (rows may repeat); ``cache`` is untouched."""
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in selected.layers:
        layer.batch_select_indices(index.to(layer.keys.device) if layer.keys is not None else index)
    return selected


def _cache_bytes_per_slot(cache) -> int:
    total = 0
    for layer in cache.layers:
        if layer.keys is not None and layer.keys.numel():
            batch, _, slots, _ = layer.keys.shape
            total += 2 * layer.keys.numel() * layer.keys.element_size() // max(1, batch * slots)
    return total


def _candidate_token_logprobs(first_logprobs, logits, candidate_ids, candidate_mask):
    """Summed log-probs [rows] of right-padded candidates [rows, L]: token 0 from ``first_logprobs``
    [rows, vocab] (the prompt's last position), token j >= 1 from ``logits`` [rows, L, vocab] at j - 1."""
    first = first_logprobs.gather(1, candidate_ids[:, :1])  # [rows, 1]
    rest = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, candidate_ids[:, 1:, None])[..., 0]
    token_logprobs = torch.cat([first, rest], dim=1)  # [rows, L]
    return torch.where(candidate_mask, token_logprobs, torch.zeros_like(token_logprobs)).sum(dim=1)


def _right_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = True
    return ids, mask


class _BatchCache:
    """The KV cache of a batch of dialogues.  Slot s of row b holds a real token iff ``live[b, s]``; row b's
    next token has position ``n_live[b]``; ``encoded[b]`` are the ids its live slots hold, in order."""

    def __init__(self, call: ModelCall, n_rows: int):
        self.call = call
        self.cache = call.new_cache()
        self.live = torch.zeros((n_rows, 0), dtype=torch.bool)  # [rows, slots]
        self.n_live = [0] * n_rows
        self.encoded: list[list[int]] = [[] for _ in range(n_rows)]

    def forget(self, row: int) -> None:
        """Mask out everything row ``row`` holds, so that it starts afresh."""
        self.live[row] = False
        self.n_live[row], self.encoded[row] = 0, []
        if not self.live.any():  # nothing live anywhere: a fresh cache, without holes
            self.cache, self.live = self.call.new_cache(), self.live[:, :0]

    def advance_to(self, prompts: dict[int, list[int]]) -> torch.Tensor:
        """Bring each row in ``prompts`` to hold exactly its prompt, encoding only the tokens it lacks (or,
        when its prompt does not extend what it holds, all of them afresh).  Returns the next-token
        log-probs [rows, vocab] after each prompt (meaningless for rows not in ``prompts``)."""
        new_tokens = {}
        for row, prompt in prompts.items():
            held = self.encoded[row]
            if not (len(prompt) > len(held) and prompt[: len(held)] == held):
                self.forget(row)
                held = []
            new_tokens[row] = prompt[len(held):]
        n_rows, width = self.live.shape[0], max(len(t) for t in new_tokens.values())
        input_ids = torch.full((n_rows, width), self.call.pad_id, dtype=torch.long)  # left-padded
        new_live = torch.zeros((n_rows, width), dtype=torch.bool)
        position_ids = torch.tensor(self.n_live, dtype=torch.long)[:, None].repeat(1, width)
        for row, tokens in new_tokens.items():
            start = width - len(tokens)
            input_ids[row, start:] = torch.tensor(tokens, dtype=torch.long)
            new_live[row, start:] = True
            position_ids[row, start:] = torch.arange(self.n_live[row], self.n_live[row] + len(tokens))
        live = torch.cat([self.live, new_live], dim=1)
        logits = self.call.logits(input_ids, live, position_ids, cache=self.cache, keep_last=1)
        self.live = live
        for row, tokens in new_tokens.items():
            self.n_live[row] += len(tokens)
            self.encoded[row] = self.encoded[row] + tokens
        return torch.log_softmax(logits[:, -1].float(), dim=-1)  # [rows, vocab], on the model's device

    def score_candidates(self, pairs: list[tuple[int, list[int]]], next_logprobs: torch.Tensor,
                         memory_budget_bytes: int) -> torch.Tensor:
        """Summed log-probs [len(pairs)] of each (row, candidate ids) continuing that row's cached prompt,
        in batched forwards from row-selected copies of the cache (the cache itself is unchanged)."""
        sums = torch.zeros(len(pairs))
        longest = max(len(ids) for _, ids in pairs)
        if longest == 0:
            return sums
        vocab = next_logprobs.shape[1]
        bytes_per_row = 8 * longest * vocab + self.live.shape[1] * _cache_bytes_per_slot(self.cache)
        group = max(1, memory_budget_bytes // max(1, bytes_per_row))
        for start in range(0, len(pairs), group):
            chunk = pairs[start : start + group]
            rows = torch.tensor([row for row, _ in chunk], dtype=torch.long)
            candidate_ids, candidate_mask = _right_padded([ids for _, ids in chunk], self.call.pad_id)
            position_ids = torch.tensor([self.n_live[row] for row, _ in chunk])[:, None] + torch.arange(
                candidate_ids.shape[1]
            )
            attention_mask = torch.cat([self.live[rows], candidate_mask], dim=1)
            cache = _select_cache_rows(self.cache, rows.to(self.call.device))
            logits = self.call.logits(candidate_ids, attention_mask, position_ids, cache=cache)
            device = logits.device
            sums[start : start + len(chunk)] = _candidate_token_logprobs(
                next_logprobs[rows.to(device)], logits, candidate_ids.to(device), candidate_mask.to(device)
            ).cpu()
        return sums


def _kv_logprobs_of_batch(call: ModelCall, dialogues: list[list[RoundIds]], memory_budget_bytes: int):
    state = _BatchCache(call, len(dialogues))
    sums = [torch.zeros(len(d), len(d[0].candidates) if d else 0) for d in dialogues]
    for round_index in range(max(len(d) for d in dialogues)):
        rows = [row for row, d in enumerate(dialogues) if round_index < len(d)]
        next_logprobs = state.advance_to({row: dialogues[row][round_index].prompt for row in rows})
        pairs = [(row, ids) for row in rows for ids in dialogues[row][round_index].candidates]
        flat = state.score_candidates(pairs, next_logprobs, memory_budget_bytes).tolist()
        for row in rows:
            n_candidates = len(dialogues[row][round_index].candidates)
            sums[row][round_index] = torch.tensor(flat[:n_candidates])
            flat = flat[n_candidates:]
    return sums


@torch.inference_mode()
def candidate_logprobs_kv(call: ModelCall, tokenizer, dialogues: list[DialogueRequest], batch_size: int = 8,
                          memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES) -> list[torch.Tensor]:
    """Summed candidate log-probs, one [n_rounds, n_candidates] tensor per dialogue, with KV reuse.

    Dialogues go through ``batch_size`` at a time (one at a time for models with sliding-window layers,
    where padding holes would shift the window); models whose cache is not made of plain dynamic
    attention layers (e.g. recurrent layers) are scored the naive way.
    """
    reusable, sliding = call.cache_is_reusable()
    if not reusable:
        return candidate_logprobs_naive(call, tokenizer, dialogues)
    ids = [dialogue_ids(tokenizer, dialogue) for dialogue in dialogues]
    per_batch = 1 if sliding else max(1, batch_size)
    # Dialogues of similar length together, to keep the padding small.
    order = sorted((i for i in range(len(ids)) if ids[i]), key=lambda i: -sum(len(r.prompt) for r in ids[i]))
    results = [torch.zeros(0, 0) for _ in dialogues]
    for start in range(0, len(order), per_batch):
        batch = order[start : start + per_batch]
        for index, sums in zip(batch, _kv_logprobs_of_batch(call, [ids[i] for i in batch], memory_budget_bytes)):
            results[index] = sums
    return results


@torch.inference_mode()
def candidate_logprobs_naive(call: ModelCall, tokenizer, dialogues: list[DialogueRequest],
                             batch_rows: int = 16) -> list[torch.Tensor]:
    """Summed candidate log-probs, one [n_rounds, n_candidates] tensor per dialogue, re-encoding
    prompt + candidate from scratch for every candidate (no cache), ``batch_rows`` sequences per forward.
    Sequences are left-padded so that every candidate ends the row and only the last logits are needed."""
    ids = [dialogue_ids(tokenizer, dialogue) for dialogue in dialogues]
    jobs = [(d, r, k) for d, rounds in enumerate(ids) for r, rnd in enumerate(rounds) for k in range(len(rnd.candidates))]
    # Sequences of similar length together, to keep the padding small.
    jobs.sort(key=lambda job: len(ids[job[0]][job[1]].prompt) + len(ids[job[0]][job[1]].candidates[job[2]]))
    results = [torch.zeros(len(rounds), len(rounds[0].candidates) if rounds else 0) for rounds in ids]
    for start in range(0, len(jobs), batch_rows):
        chunk = [(d, r, k) for d, r, k in jobs[start : start + batch_rows] if ids[d][r].candidates[k]]
        if not chunk:
            continue
        sequences = [ids[d][r].prompt + ids[d][r].candidates[k] for d, r, k in chunk]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(chunk), width), call.pad_id, dtype=torch.long)  # left-padded
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        position_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, width - len(sequence) :] = torch.tensor(sequence)
            mask[row, width - len(sequence) :] = True
            position_ids[row, width - len(sequence) :] = torch.arange(len(sequence))
        keep = max(len(ids[d][r].candidates[k]) for d, r, k in chunk) + 1
        logits = call.logits(input_ids, mask, position_ids, keep_last=keep)  # [rows, <= keep, vocab]
        for row, (d, r, k) in enumerate(chunk):
            candidate = ids[d][r].candidates[k]
            predicting = logits[row, -len(candidate) - 1 : -1].float()  # [len(candidate), vocab]
            targets = torch.tensor(candidate, device=logits.device)[:, None]
            results[d][r, k] = torch.log_softmax(predicting, dim=-1).gather(1, targets).sum().item()
    return results
