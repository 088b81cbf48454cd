"""Shared-prefix scoring: many prompts that share a long beginning, each with candidate answers, scored by
encoding every shared token once.

The protocol asks, after each round of a dialogue, 100 held-out questions whose prompts are the same
history followed by different option sets; the answers of one question ("The best option is Flight 1."
... "Flight 3.") share everything up to the option number.  Scoring each (prompt, answer) as its own
sequence forwards the history 300 times.  Here the prompts of a *group* are scored as a prefix tree:

* the group's *root* (the longest common token prefix of its prompts, less one token) is encoded once into
  a KV cache, and carried to the next group, which usually extends it (round k+1 extends round k): only
  the tokens past the longest common prefix of the old and new roots are encoded;
* what follows the root (each prompt's own tail, then its candidates) is laid out as a trie of token ids,
  packed into one sequence, and forwarded on top of the cache with a 4D attention mask under which each
  token sees the root and its own ancestors in the trie, at position ids equal to its depth; tokens shared
  by several branches (the answers' common words) are one trie node, scored once;
* the trie is cut into chunks of whole prompts whose size the memory budget bounds, and the cache is
  cropped back to the root after each chunk.

The scores are the summed log-probabilities of each candidate's tokens given its prompt, as in
``lm_scoring`` (the per-prompt path, against which the tests compare).
"""
from __future__ import annotations

import torch

from eval.lm.scoring import ModelCall, RoundIds

# Never pack more tokens than this into one forward: dense attention over the chunk costs chunk x (root +
# chunk), so very long chunks waste work on masked pairs.
DEFAULT_CHUNK_TOKENS = 768


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def supports_prefix_tree(call: ModelCall) -> bool:
    """Whether the model can be scored as a prefix tree: plain dynamic attention layers without sliding
    windows (the tree mask replaces every layer's mask) and an attention that takes a 4D mask as given."""
    reusable, sliding = call.cache_is_reusable()
    config = getattr(call.model, "config", None)
    attention = getattr(config, "_attn_implementation", None)
    return reusable and not sliding and attention in ("sdpa", "eager")


class _Trie:
    """The tokens past the root of a chunk of prompts: node i has token ``tokens[i]``, parent ``parents[i]``
    (-1: the root) and depth ``depths[i]`` (1 for a child of the root); parents come before children."""

    def __init__(self):
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        self._children: dict[tuple[int, int], int] = {}

    def add(self, ids: list[int], parent: int = -1) -> list[int]:
        """Insert a path of ``ids`` below node ``parent``; returns its node indices."""
        path = []
        for token in ids:
            key = (parent, token)
            node = self._children.get(key)
            if node is None:
                node = len(self.tokens)
                self._children[key] = node
                self.tokens.append(token)
                self.parents.append(parent)
                self.depths.append(1 + (self.depths[parent] if parent >= 0 else 0))
            path.append(node)
            parent = node
        return path

    def ancestry(self) -> torch.Tensor:
        """bool [nodes, nodes]: entry (i, j) says node j is node i or one of its ancestors."""
        n = len(self.tokens)
        seen = torch.zeros((n, n), dtype=torch.bool)
        for i, parent in enumerate(self.parents):
            if parent >= 0:
                seen[i] = seen[parent]
            seen[i, i] = True
        return seen


class PrefixTreeScorer:
    """Scores groups of prompts with candidates (see module docstring), holding one KV cache between calls
    so that a later group reuses what an earlier one encoded."""

    def __init__(self, call: ModelCall, memory_budget_bytes: int, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
        self.call = call
        self.memory_budget_bytes = memory_budget_bytes
        self.chunk_tokens = chunk_tokens
        self.cache = call.new_cache()
        self.held: list[int] = []  # the token ids the cache holds, in order
        config = call.model.config
        self._heads = getattr(config, "num_attention_heads", 1)
        self._eager = getattr(config, "_attn_implementation", None) == "eager"

    def _crop(self, length: int) -> None:
        for layer in self.cache.layers:
            if layer.keys is not None and layer.keys.numel():
                layer.keys = layer.keys[..., :length, :]
                layer.values = layer.values[..., :length, :]
        self.held = self.held[:length]

    def _encode_root(self, root: list[int]) -> None:
        """Make the cache hold exactly ``root``, encoding only the tokens past what it shares with it."""
        keep = common_prefix_length(self.held, root)
        if keep == 0 and self.held:
            self.cache, self.held = self.call.new_cache(), []
        self._crop(keep)
        new = root[keep:]
        if new:
            input_ids = torch.tensor([new], dtype=torch.long)
            mask = torch.ones((1, len(root)), dtype=torch.long)  # [1, held + new]
            positions = torch.arange(keep, len(root))[None]
            self.call.logits(input_ids, mask, positions, cache=self.cache, keep_last=1)
            self.held = list(root)

    def _chunk_budget(self, root_length: int, vocab: int) -> int:
        """The most trie nodes one forward may hold under the memory budget: its mask and attention
        weights grow as nodes x (root + nodes) per head, its logits as nodes x vocab."""
        n = self.chunk_tokens
        while n > 16:
            attention = n * (root_length + n) * 4 * (self._heads + 1)
            logits = 2 * n * vocab * 4
            if attention + logits <= self.memory_budget_bytes:
                break
            n //= 2
        return n

    def _forward_chunk(self, root_length: int, items: list[RoundIds]) -> list[torch.Tensor]:
        """Summed candidate log-probs of ``items`` (each prompt extends the root by >= 1 token)."""
        trie = _Trie()
        targets = []  # (item, candidate, predicting node, target token)
        for item_index, item in enumerate(items):
            prompt_path = trie.add(item.prompt[root_length:])
            for candidate_index, candidate in enumerate(item.candidates):
                path = prompt_path + trie.add(candidate, prompt_path[-1])
                for j, token in enumerate(candidate):
                    targets.append((item_index, candidate_index, path[len(prompt_path) + j - 1], token))
        if not targets:
            return [torch.zeros(len(item.candidates)) for item in items]
        n = len(trie.tokens)
        allowed = torch.cat([torch.ones((n, root_length), dtype=torch.bool), trie.ancestry()], dim=1)
        device, dtype = self.call.device, self.call.model.dtype
        if self._eager:  # eager attention adds the mask to its scores
            mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        else:
            mask = allowed
        positions = root_length - 1 + torch.tensor(trie.depths)
        predicting = sorted({t[2] for t in targets})
        row_of = {node: row for row, node in enumerate(predicting)}
        logits = self._tree_logits(torch.tensor([trie.tokens]), mask[None, None].to(device), positions[None],
                                   torch.tensor(predicting))  # [len(predicting), vocab]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        rows = torch.tensor([row_of[t[2]] for t in targets], device=logprobs.device)
        tokens = torch.tensor([t[3] for t in targets], device=logprobs.device)
        picked = logprobs[rows, tokens].cpu()  # [targets]
        sums = [torch.zeros(len(item.candidates)) for item in items]
        for (item_index, candidate_index, _, _), value in zip(targets, picked.tolist()):
            sums[item_index][candidate_index] += value
        self._crop(root_length)
        return sums

    def _tree_logits(self, input_ids, mask, position_ids, keep: torch.Tensor) -> torch.Tensor:
        """Logits [len(keep), vocab] at sequence positions ``keep`` of a forward on top of the cache."""
        call, device = self.call, self.call.device
        kwargs = {call.cache_kwarg: self.cache, "use_cache": True}
        if call.has_logits_to_keep:
            kwargs["logits_to_keep"] = keep.to(device)
        call.forwarded_tokens += input_ids.shape[1]
        output = call.model(input_ids=input_ids.to(device), attention_mask=mask,
                            position_ids=position_ids.to(device), **kwargs)
        logits = output.logits[0]
        return logits if call.has_logits_to_keep else logits[keep.to(device)]

    @torch.inference_mode()
    def score_group(self, items: list[RoundIds]) -> list[torch.Tensor]:
        """Summed log-probs of each item's candidates, [n_candidates] per item, sharing the items' common
        prefix (and whatever the cache already holds of it)."""
        root = items[0].prompt
        for item in items[1:]:
            root = root[: common_prefix_length(root, item.prompt)]
        root_length = max(0, min(len(root), min(len(item.prompt) for item in items) - 1))
        self._encode_root(items[0].prompt[:root_length])
        vocab = getattr(self.call.model.config, "vocab_size", None) or 1 << 17
        budget = self._chunk_budget(root_length, vocab)
        results: list[torch.Tensor] = []
        chunk: list[RoundIds] = []
        size = 0
        for item in items:
            cost = len(item.prompt) - root_length + sum(len(c) for c in item.candidates)
            if chunk and size + cost > budget:
                results += self._forward_chunk(root_length, chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += cost
        return results + self._forward_chunk(root_length, chunk)
