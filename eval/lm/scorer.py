"""Scoring and generating answers with a loaded causal LM (``eval.lm.loading``): log-probabilities of
candidate answers of multi-round dialogues with KV-cache reuse (``eval.lm.scoring``) or a shared-prefix tree
(``eval.lm.prefix_tree``), and free-text replies (parsed by ``eval.lm.answers``).

    lm = load_causal_lm("google/gemma-2-2b-it", adapter="runs/lora", load_in_4bit=True)
    scorer = ChoiceScorer(lm)
    probs = scorer.score([DialogueRequest(rounds=[RoundRequest(messages, candidates), ...])])
    # probs[d]: [n_rounds, n_candidates], each row a distribution over the candidates
"""
from __future__ import annotations

import torch

from ppl_models.errors import BayesTeachError

from eval.text.chat_format import chat_segments, encode_segment
from eval.text.prompt_template import default_template
from eval.lm.loading import LoadedLM
from eval.lm.prefix_tree import PrefixTreeScorer, supports_prefix_tree
from eval.lm.scoring import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    DialogueRequest,
    ModelCall,
    RoundRequest,
    candidate_logprobs_kv,
    candidate_logprobs_naive,
    prompt_ids,
    round_ids,
)

class ChoiceScorer:
    """Scores and generates assistant answers with a loaded causal LM.

    Scoring goes through the shared-prefix tree (``lm_prefix_tree``) where the model supports it, else
    through the batched KV path of ``lm_scoring``, where ``batch_size`` dialogues share a forward (and
    conversations share one when generating); the naive (per-prompt) baseline runs ``naive_batch_rows``
    (prompt + candidate) sequences per forward; ``memory_budget_bytes`` bounds what one forward adds
    (its attention mask and weights, logits, cache copies).  ``on_prompts``: called with a number of prompts
    each time that many are scored or answered (a progress bar's hint; eval/runner/progress.py).
    """

    on_prompts = None

    def __init__(self, lm: LoadedLM, batch_size: int = 8, naive_batch_rows: int = 16,
                 memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES):
        self.lm = lm
        self.batch_size = batch_size
        self.naive_batch_rows = naive_batch_rows
        self.memory_budget_bytes = memory_budget_bytes
        self.call = ModelCall.of(lm.model, lm.tokenizer.pad_token_id)
        self.tree = PrefixTreeScorer(self.call, memory_budget_bytes) if supports_prefix_tree(self.call) else None

    def candidate_logprobs(self, dialogues: list[DialogueRequest]) -> list[torch.Tensor]:
        """Summed log-prob of each candidate's tokens: one [n_rounds, n_candidates] tensor per dialogue."""
        if self.tree is None:
            return candidate_logprobs_kv(self.call, self.lm.tokenizer, dialogues, self.batch_size,
                                         self.memory_budget_bytes)
        groups = [[round_request] for dialogue in dialogues for round_request in dialogue.rounds]
        flat = iter(self.group_logprobs(groups))
        return [torch.stack([next(flat)[0] for _ in dialogue.rounds]) if dialogue.rounds else torch.zeros(0, 0)
                for dialogue in dialogues]

    def group_logprobs(self, groups: list[list[RoundRequest]]) -> list[torch.Tensor]:
        """Summed log-probs for groups of prompts that share a long beginning (e.g. one dialogue's history
        followed by different questions): one [n_prompts, n_candidates] tensor per group.  Each group's
        common prefix is encoded once; consecutive groups reuse what they share (order the groups so that
        each extends the one before, e.g. a dialogue's rounds in order)."""
        tokenizer = self.lm.tokenizer
        if self.tree is None:
            dialogues = [DialogueRequest([request]) for group in groups for request in group]
            flat = iter(candidate_logprobs_kv(self.call, tokenizer, dialogues, self.batch_size, self.memory_budget_bytes))
            self._report(len(dialogues))
            return [torch.cat([next(flat) for _ in group]) for group in groups]
        results = []
        for group in groups:
            scored = self.tree.score_group([round_ids(tokenizer, request) for request in group])
            results.append(torch.stack(scored) if scored else torch.zeros(0, 0))
            self._report(len(group))
        return results

    def _report(self, n_prompts: int) -> None:
        if self.on_prompts is not None:
            self.on_prompts(n_prompts)

    def score_groups(self, groups: list[list[RoundRequest]]) -> list[torch.Tensor]:
        """Probabilities over candidates of grouped prompts (``group_logprobs``), [n_prompts, n_candidates]
        per group."""
        return [torch.softmax(sums, dim=-1) for sums in self.group_logprobs(groups)]

    def candidate_logprobs_kv(self, dialogues: list[DialogueRequest]) -> list[torch.Tensor]:
        """As ``candidate_logprobs`` through the batched KV path (no prefix tree): each prompt encoded on its
        own, its candidates branching off its cache (the per-prompt path of the benchmarks)."""
        return candidate_logprobs_kv(self.call, self.lm.tokenizer, dialogues, self.batch_size, self.memory_budget_bytes)

    def candidate_logprobs_naive(self, dialogues: list[DialogueRequest]) -> list[torch.Tensor]:
        """As ``candidate_logprobs``, re-encoding prompt + candidate for every candidate (no cache)."""
        return candidate_logprobs_naive(self.call, self.lm.tokenizer, dialogues, self.naive_batch_rows)

    def score(self, dialogues: list[DialogueRequest]) -> list[torch.Tensor]:
        """Probabilities over candidates (softmax of summed log-probs), [n_rounds, n_candidates] per
        dialogue, computed with KV-cache reuse."""
        return [torch.softmax(sums, dim=-1) for sums in self.candidate_logprobs(dialogues)]

    def score_naive(self, dialogues: list[DialogueRequest]) -> list[torch.Tensor]:
        """Same as ``score`` without any cache (the baseline)."""
        return [torch.softmax(sums, dim=-1) for sums in self.candidate_logprobs_naive(dialogues)]

    @torch.inference_mode()
    def generate(self, conversations: list[list[dict]], max_new_tokens: int = 24) -> list[str]:
        """Greedy answers to each conversation (ending in a user turn), decoded without special tokens.
        Decoding stops at eos or at the chat format's end-of-turn token."""
        tokenizer, model = self.lm.tokenizer, self.lm.model
        stop_ids = _stop_token_ids(tokenizer)
        answers = []
        for start in range(0, len(conversations), self.batch_size):
            prompts = [prompt_ids(tokenizer, messages) for messages in conversations[start : start + self.batch_size]]
            width = max(len(p) for p in prompts)
            input_ids = torch.full((len(prompts), width), self.call.pad_id, dtype=torch.long)  # left-padded
            attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for row, prompt in enumerate(prompts):
                input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
                attention_mask[row, width - len(prompt) :] = 1
            output = model.generate(
                input_ids=input_ids.to(self.call.device),
                attention_mask=attention_mask.to(self.call.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids or None,
                pad_token_id=self.call.pad_id,
            )
            new_tokens = output[:, width:].cpu()  # [rows, <= max_new_tokens]
            answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            self._report(len(prompts))
        return answers


def _stop_token_ids(tokenizer) -> list[int]:
    """eos, plus the first token of the chat format's end-of-turn marker when that is a special token."""
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    content = "x"
    try:
        assistant = chat_segments(tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": content}])[-1]
    except Exception:  # noqa: BLE001 - a template that cannot render this; eos alone then
        return stops
    end_of_turn = assistant.text[assistant.text.find(content) + len(content) :]
    end_ids = encode_segment(tokenizer, end_of_turn)
    if end_ids and end_ids[0] in set(tokenizer.all_special_ids) and end_ids[0] not in stops:
        stops.append(end_ids[0])
    return stops


class LMRole:
    """What every role a causal LM plays (assistant, designer) holds: the model, how it answers (``mode``
    "score": probabilities of the candidate answers; "generate": greedy decoding, then parsing), the prompt
    template that words its prompts, and a scorer."""

    def __init__(self, lm: LoadedLM, mode: str = "score", name: str | None = None, batch_size: int = 16,
                 template=None):
        if mode not in ("score", "generate"):
            raise BayesTeachError(f"mode must be 'score' or 'generate', not {mode!r}")
        self.lm, self.mode = lm, mode
        self.template = template or default_template()
        self.scorer = ChoiceScorer(lm, batch_size=batch_size)
        self.name = name or f"lm:{lm.model_id}"
        self.unparseable_examples: list[str] = []  # a few raw answers that named nothing, for reports
