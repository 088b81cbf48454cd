"""Chat datasets for distillation: load JSONL, tokenise with the shared chat format, collate.

File format (JSONL, one conversation per line; also loadable with ``datasets.load_dataset("json", ...)``)::

    {"messages": [{"role": "user", "content": "..."},
                  {"role": "assistant", "content": "The best option is Hotel 2."}, ...],
     "soft_targets": [{"message_index": 1,
                       "candidates": ["The best option is Hotel 1.", "The best option is Hotel 2."],
                       "probs": [0.3, 0.7]}, ...]}          # optional

Every assistant message is a training target.  A soft target gives, for one assistant message, the
Bayesian assistant's posterior predictive over candidate answers.  Candidate k of message i is scored
exactly as the evaluator scores options: its tokens are ``tokenize_chat(messages[:i] + [assistant:
candidate_k])`` minus the ids of the conversation before message i (its *prefix*).

Lines are parsed here (not by ``datasets``) so that a bad line is reported by file and line number.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from eval.text.chat_format import (
    ChatTemplateError, encode_segment, join_segments, render_chat, tokenize_chat, tokenize_segments,
)
from ppl_models.errors import BayesTeachError, read_user_text

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # label value the loss skips (the PyTorch / HF convention)


class DatasetFormatError(BayesTeachError):
    """A dataset line is not valid JSON or not a valid conversation; the message names file and line."""


class EmptyLossMaskError(BayesTeachError):
    """Some conversations have no assistant token left to train on (usually: cut by max_length)."""


# ---------------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SoftTarget:
    message_index: int  # index into messages of the assistant message this distribution is about
    candidates: tuple[str, ...]  # candidate assistant answers (one is usually the message itself)
    probs: tuple[float, ...]  # target probability of each candidate, summing to 1


@dataclass(frozen=True)
class ChatExample:
    messages: list[dict]
    soft_targets: tuple[SoftTarget, ...]
    where: str  # "path:line", for error messages


def load_chat_jsonl(path: str | Path) -> list[ChatExample]:
    """All conversations in a JSONL file, validated.  Blank lines are skipped; anything else that is not
    a valid conversation raises DatasetFormatError naming the file and the (1-based) line number."""
    path = Path(path)
    examples = []
    for line_number, line in enumerate(read_user_text(path, DatasetFormatError).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetFormatError(f"{where}: not valid JSON ({error})") from None
        examples.append(parse_example(record, where))
    if not examples:
        raise DatasetFormatError(f"{path}: no conversations in the file")
    return examples


def parse_example(record, where: str) -> ChatExample:
    def fail(problem: str):
        raise DatasetFormatError(f"{where}: {problem}")

    if not isinstance(record, dict) or "messages" not in record:
        fail('expected a JSON object with a "messages" list')
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        fail('"messages" must be a non-empty list')
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            fail(f'message {i} must be an object with a string "content"')
        if message.get("role") not in ROLES:
            fail(f"message {i} has role {message.get('role')!r}; expected one of {ROLES}")
    if not any(m["role"] == "assistant" for m in messages):
        fail("no assistant message: nothing to train on")
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return ChatExample(clean, _parse_soft_targets(record.get("soft_targets"), clean, fail), where)


def _parse_soft_targets(raw, messages, fail) -> tuple[SoftTarget, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        fail('"soft_targets" must be a list')
    targets, seen = [], set()
    for j, entry in enumerate(raw):
        if not isinstance(entry, dict):
            fail(f"soft_targets[{j}] must be an object")
        index, candidates, probs = entry.get("message_index"), entry.get("candidates"), entry.get("probs")
        if not isinstance(index, int) or not 0 <= index < len(messages) or messages[index]["role"] != "assistant":
            fail(f"soft_targets[{j}].message_index must be the index of an assistant message, got {index!r}")
        if index in seen:
            fail(f"soft_targets[{j}]: message {index} has two soft targets")
        seen.add(index)
        if not isinstance(candidates, list) or not candidates or not all(isinstance(c, str) for c in candidates):
            fail(f"soft_targets[{j}].candidates must be a non-empty list of strings")
        if not isinstance(probs, list) or len(probs) != len(candidates):
            fail(f"soft_targets[{j}].probs must be a list with one number per candidate")
        if not all(isinstance(p, (int, float)) and math.isfinite(p) and p >= 0 for p in probs):
            fail(f"soft_targets[{j}].probs must be finite and non-negative")
        total = float(sum(probs))
        if abs(total - 1.0) > 1e-3:
            fail(f"soft_targets[{j}].probs sum to {total:.6f}, not 1")
        targets.append(SoftTarget(index, tuple(candidates), tuple(float(p) / total for p in probs)))
    return tuple(targets)


# ---------------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------------
@dataclass
class TokenizedSoftTarget:
    prefix_length: int  # tokens of the conversation before the assistant message (shared by all candidates)
    candidate_ids: list[list[int]]  # per candidate: its tokens after the prefix
    probs: list[float]


@dataclass
class TokenizedExample:
    index: int  # position in the dataset (what error messages name)
    where: str  # "path:line"
    input_ids: list[int]  # [T <= max_length]
    target_mask: list[bool]  # [T] True on assistant tokens: the cross-entropy targets
    soft_targets: list[TokenizedSoftTarget] = field(default_factory=list)
    truncated_tokens: int = 0
    dropped_soft_targets: int = 0
    # [T] True on the answer tokens that tell the teaching set's answers apart (mark_choice_tokens): the option
    # number of "The best option is Flight 2.", not its fixed words.  Logged apart, never weighted.
    choice_mask: list[bool] = field(default_factory=list)


@dataclass
class TruncationReport:
    max_length: int
    truncated_examples: list[int]  # dataset indices of conversations cut at max_length
    tokens_dropped: int
    soft_targets_dropped: int  # soft targets whose prefix + candidate no longer fits

    def describe(self) -> str:
        if not self.truncated_examples:
            return f"no conversation exceeds max_length={self.max_length}"
        shown = ", ".join(map(str, self.truncated_examples[:10]))
        more = " ..." if len(self.truncated_examples) > 10 else ""
        return (
            f"{len(self.truncated_examples)} conversation(s) longer than max_length={self.max_length} were cut "
            f"at the end ({self.tokens_dropped} tokens dropped, {self.soft_targets_dropped} soft target(s) "
            f"dropped); dataset indices: {shown}{more}"
        )


def message_start_positions(tokenizer, messages) -> list[int]:
    """Token position where each message's segment starts in ``tokenize_chat(tokenizer, messages)``."""
    return _segment_starts([len(ids) for _, ids in tokenize_segments(tokenizer, messages)], len(messages))


def _segment_starts(lengths: list[int], n_messages: int) -> list[int]:
    lead = len(lengths) - n_messages  # 1 when a "prompt" segment precedes a leading assistant message
    starts, position = [], sum(lengths[:lead])
    for length in lengths[lead:]:
        starts.append(position)
        position += length
    return starts


def candidate_token_ids(tokenizer, messages, message_index: int, candidate: str, prefix_ids: list[int]) -> list[int]:
    """The scoring definition: ids of messages[:i] + [assistant: candidate], minus the prefix ids."""
    full_ids, _ = tokenize_chat(tokenizer, messages[:message_index] + [{"role": "assistant", "content": candidate}])
    if full_ids[: len(prefix_ids)] != prefix_ids:
        raise ChatTemplateError(f"candidate {candidate!r} changes the tokens of its prefix; cannot score it exactly")
    return full_ids[len(prefix_ids):]


def tokenize_example(tokenizer, example: ChatExample, index: int, max_length: int, with_soft_targets: bool) -> TokenizedExample:
    messages = example.messages
    segments = tokenize_segments(tokenizer, messages)  # [(segment, ids)]
    input_ids, target_mask = join_segments(segments)
    full_length = len(input_ids)
    tokenized = TokenizedExample(index, example.where, input_ids[:max_length], target_mask[:max_length])
    tokenized.truncated_tokens = max(0, full_length - max_length)
    if with_soft_targets and example.soft_targets:
        # candidate_token_ids' definition, computed from this conversation's own segments: the text before
        # message i (generation prompt included) is shared by all its candidates, so each candidate costs one
        # rendering, and the conversation's own answer none (chat_segments checked its prefix already).
        starts = _segment_starts([len(ids) for _, ids in segments], len(messages))
        lead = len(segments) - len(messages)
        for target in example.soft_targets:
            i = target.message_index
            prefix_length, prefix_text = starts[i], "".join(segment.text for segment, _ in segments[: lead + i])
            candidates = []
            for candidate in target.candidates:
                if candidate == messages[i]["content"]:
                    candidates.append(segments[lead + i][1])
                    continue
                rendered = render_chat(tokenizer, messages[:i] + [{"role": "assistant", "content": candidate}])
                if not rendered.startswith(prefix_text):
                    raise DatasetFormatError(f"{example.where}: soft target of message {i}: candidate {candidate!r} "
                                             "changes the tokens of its prefix; cannot score it exactly")
                candidates.append(encode_segment(tokenizer, rendered[len(prefix_text):]))
            if prefix_length + max(len(c) for c in candidates) > max_length:
                tokenized.dropped_soft_targets += 1
                continue
            tokenized.soft_targets.append(TokenizedSoftTarget(prefix_length, candidates, list(target.probs)))
    return tokenized


def tokenize_workers(num_processes: int = 1) -> int:
    """Tokenising processes for each of ``num_processes`` training processes: the CPU cores shared out."""
    return max(1, min(8, (os.cpu_count() or 1) // max(1, num_processes)))


_WORKER_STATE: tuple = ()  # (tokenizer, examples, max_length, with_soft_targets), inherited by forked workers


def _tokenize_range(bounds: tuple[int, int]) -> list[TokenizedExample]:
    tokenizer, examples, max_length, with_soft_targets = _WORKER_STATE
    return [tokenize_example(tokenizer, examples[i], i, max_length, with_soft_targets) for i in range(*bounds)]


def tokenize_dataset(tokenizer, examples: list[ChatExample], max_length: int, with_soft_targets: bool,
                     workers: int = 1):
    """-> (list[TokenizedExample], TruncationReport).  Raises EmptyLossMaskError if any conversation has
    no assistant token within max_length: it would silently contribute nothing.

    ``workers`` > 1 tokenises in that many forked processes (rendering chat templates is pure-Python work,
    milliseconds a conversation); the result is the same list, in the same order."""
    global _WORKER_STATE
    if workers > 1 and len(examples) >= 100 * workers and "fork" in multiprocessing.get_all_start_methods():
        _WORKER_STATE = (tokenizer, examples, max_length, with_soft_targets)
        cuts = [len(examples) * k // (8 * workers) for k in range(8 * workers + 1)]
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                tokenized = [t for part in pool.map(_tokenize_range, list(zip(cuts, cuts[1:]))) for t in part]
        finally:
            _WORKER_STATE = ()
    else:
        tokenized = [tokenize_example(tokenizer, e, i, max_length, with_soft_targets) for i, e in enumerate(examples)]
    empty = [t for t in tokenized if not any(t.target_mask)]
    if empty:
        names = ", ".join(f"{t.index} ({t.where})" for t in empty[:10]) + (" ..." if len(empty) > 10 else "")
        raise EmptyLossMaskError(
            f"{len(empty)} conversation(s) have no assistant tokens within max_length={max_length}, so there "
            f"would be nothing to train on; dataset indices: {names}. Raise max_length or shorten them."
        )
    mark_choice_tokens(tokenized)
    cut = [t for t in tokenized if t.truncated_tokens or t.dropped_soft_targets]
    report = TruncationReport(
        max_length,
        [t.index for t in cut],
        sum(t.truncated_tokens for t in cut),
        sum(t.dropped_soft_targets for t in cut),
    )
    return tokenized, report


def answer_spans(target_mask: list[bool]) -> list[tuple[int, int]]:
    """(start, length) of each run of target tokens: one per assistant answer."""
    spans, start = [], None
    for position, target in enumerate(list(target_mask) + [False]):
        if target and start is None:
            start = position
        elif not target and start is not None:
            spans.append((start, position - start))
            start = None
    return spans


def mark_choice_tokens(tokenized: list[TokenizedExample]) -> None:
    """Set each example's ``choice_mask``: among the dataset's answers of the same length in tokens, the
    offsets where they do not all have the same token.  A teaching set's answers differ only in the option
    they name, so these are its option-number tokens; the loss on them alone shows whether a model learns
    the choice while the answer's fixed words, learnt in a few steps, dominate the mean.  An answer whose
    length no other answer shares has none."""
    seen: dict[tuple[int, int], set] = {}  # (answer length, offset) -> its tokens (two are enough)
    for example in tokenized:
        for start, length in answer_spans(example.target_mask):
            for offset in range(length):
                tokens = seen.setdefault((length, offset), set())
                if len(tokens) < 2:
                    tokens.add(example.input_ids[start + offset])
    for example in tokenized:
        mask = [False] * len(example.input_ids)
        for start, length in answer_spans(example.target_mask):
            for offset in range(length):
                mask[start + offset] = len(seen[(length, offset)]) > 1
        example.choice_mask = mask


# ---------------------------------------------------------------------------------------------------
# Collation: conversations and soft-target candidates share one padded batch (one forward pass)
# ---------------------------------------------------------------------------------------------------
@dataclass
class ChatBatch:
    input_ids: torch.Tensor  # [R, T] R = conversations + candidate rows, right-padded
    attention_mask: torch.Tensor  # [R, T] 1 on real tokens
    target_mask: torch.Tensor  # [R, T] bool: cross-entropy targets (assistant tokens of conversation rows)
    candidate_mask: torch.Tensor  # [R, T] bool: tokens of a candidate answer (candidate rows only)
    candidate_row: torch.Tensor  # [G, K] row of candidate k of soft target g (-1 where g has < K candidates)
    target_probs: torch.Tensor  # [G, K] target probabilities (0 where padded)
    example_indices: list[int]  # dataset index of each conversation row
    num_conversations: int
    # Soft targets whose candidates are all one token need no rows of their own: candidate k's log-prob is
    # the conversation row's next-token log-prob of token k at the position before the answer.
    inline_row: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # [H] conversation row
    inline_position: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # [H] predicting position
    inline_tokens: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 0), dtype=torch.long))  # [H, K] (-1 = pad)
    inline_probs: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 0)))  # [H, K] target probabilities
    # [R, T] bool: the targets that are choice tokens (TokenizedExample.choice_mask); empty: none marked
    choice_mask: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 0), dtype=torch.bool))

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def num_soft_targets(self) -> int:
        return len(self.candidate_row) + len(self.inline_row)

    def to(self, device) -> "ChatBatch":
        move = lambda t: t.to(device)  # noqa: E731
        return ChatBatch(
            move(self.input_ids), move(self.attention_mask), move(self.target_mask), move(self.candidate_mask),
            move(self.candidate_row), move(self.target_probs), self.example_indices, self.num_conversations,
            move(self.inline_row), move(self.inline_position), move(self.inline_tokens), move(self.inline_probs),
            move(self.choice_mask),
        )


def collate(examples: list[TokenizedExample], pad_id: int, inline_single_tokens: bool = True) -> ChatBatch:
    """One padded batch: the conversations, then one row per candidate of each soft target (or, with
    ``inline_single_tokens``, no rows for a soft target whose candidates are single tokens)."""
    rows: list[tuple[list[int], list[bool], list[bool]]] = []  # (ids, target mask, candidate mask)
    for example in examples:
        rows.append((example.input_ids, example.target_mask, [False] * len(example.input_ids)))
    groups: list[tuple[list[int], list[float]]] = []  # (candidate rows, probs) per soft target
    inline: list[tuple[int, int, list[int], list[float]]] = []  # (row, position, tokens, probs)
    for conversation_row, example in enumerate(examples):
        for target in example.soft_targets:
            if inline_single_tokens and target.prefix_length > 0 and all(len(c) == 1 for c in target.candidate_ids):
                inline.append((conversation_row, target.prefix_length - 1, [c[0] for c in target.candidate_ids], target.probs))
                continue
            prefix = example.input_ids[: target.prefix_length]
            first_row = len(rows)
            for candidate in target.candidate_ids:
                rows.append((prefix + candidate, [False] * (len(prefix) + len(candidate)),
                             [False] * len(prefix) + [True] * len(candidate)))
            groups.append((list(range(first_row, len(rows))), target.probs))

    length = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    target_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    candidate_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    choice_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for r, (ids, targets, candidates) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, : len(ids)] = 1
        target_mask[r, : len(ids)] = torch.tensor(targets, dtype=torch.bool)
        candidate_mask[r, : len(ids)] = torch.tensor(candidates, dtype=torch.bool)
    for r, example in enumerate(examples):  # conversation rows come first
        if example.choice_mask:
            choice_mask[r, : len(example.choice_mask)] = torch.tensor(example.choice_mask, dtype=torch.bool)

    candidate_row, target_probs = _padded_groups(groups)
    inline_tokens, inline_probs = _padded_groups([(tokens, probs) for _, _, tokens, probs in inline])
    return ChatBatch(input_ids, attention_mask, target_mask, candidate_mask, candidate_row, target_probs,
                     [e.index for e in examples], len(examples),
                     torch.tensor([row for row, _, _, _ in inline], dtype=torch.long),
                     torch.tensor([position for _, position, _, _ in inline], dtype=torch.long),
                     inline_tokens, inline_probs, choice_mask)


def _padded_groups(groups: list[tuple[list[int], list[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(long [G, K] padded with -1, float [G, K] padded with 0) from G groups of (indices, probabilities)."""
    width = max((len(indices) for indices, _ in groups), default=0)
    indices_out = torch.full((len(groups), width), -1, dtype=torch.long)
    probs_out = torch.zeros((len(groups), width), dtype=torch.float32)
    for g, (indices, probs) in enumerate(groups):
        indices_out[g, : len(indices)] = torch.tensor(indices, dtype=torch.long)
        probs_out[g, : len(probs)] = torch.tensor(probs, dtype=torch.float32)
    return indices_out, probs_out
