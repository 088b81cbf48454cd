"""The embedded default student: a small LLaMA-style causal LM built from scratch, with a tokenizer made for
one domain's dialogue text, trained fully on the teaching data within a wall-clock budget (CPU friendly).

    model, tokenizer = build_student(domain)                       # random weights, domain tokenizer
    result = train_student(domain, "data/train-bayesian.jsonl", "runs/student", budget_minutes=10)

Design (the measurements behind each choice: experiments/README.md, "The embedded student's design"):

* **Tokenizer: one token per phrase** (``distill/student/tokenizer.py``, with the chat template).  Word-level
  over a vocabulary derived from the domain declaration and ``eval.text.dialogue``'s fixed phrases, never
  from a sample: the whole task explanation, each "feature: value" pair with its leading separator
  (", price: $370"), each bare value text ("$370", "4 stars", "10:48 AM"), "Hotel 2:", "Round 3." and the
  recurring answer / feedback phrases ("Not quite: I prefer Hotel") are single tokens.  A regex pre-tokeniser
  tries these phrases longest first, then falls back to words, single digits and single punctuation marks (all
  in the vocabulary), so any number is representable.  Whitespace is dropped.  A dialogue is then a few
  times shorter than with word-level tokens (shorter still with option tokens, the default), which is what
  makes CPU training feasible.
* **Option tokens** (``option_tokens``, default on): where a domain has few enough value combinations
  (hotel 3 x 5,445 lines, flight 3 x 3,993), each whole option line "Hotel 2: distance to downtown: 3 miles,
  price: $460, ..." is one token, its embedding fixed at the header's plus the sum of its values' ordinal
  directions (``freeze_option_embeddings``).  The trainer computes logits only where the loss reads them, so
  the large vocabulary costs little.
* **What made it learn** (without these changes it stayed at chance in every variant of width, depth,
  learning rate and token granularity tried):
  1. ``restate_choices``: each feedback turn starts with the chosen option's description ("Chosen: ..."),
     so the evidence is where attention can pool it, not one hop away behind an option number;
  2. ``answer_after_options``: the answer's option number is predicted at the last option line's position,
     not at a constant "assistant" token (``student_chat_template``);
  3. ``freeze_option_embeddings`` and Adam's beta2 = 0.95: ~21,800 rarely seen option rows no longer take
     noisy Adam steps as large as their structure;
  4. the answer is the option number alone: a period and an end marker after it as targets too kept the
     same student at chance.
  Why each default is what it is: the ``StudentConfig`` comments (``distill/student/config.py``); a run's
  own numbers are in its report.
* **Chat template** (``student_chat_template``): ``<|role|>content`` per message, without the closing
  question; an answer is its option number alone.  Append-only, so ``eval.text.chat_format.tokenize_chat``
  segments it exactly.
* **Value embeddings start ordinal**: each value token's embedding starts as a point on a per-feature
  quarter circle at angle (normalised value) * pi/2 (plus the usual noise, halved), so ", price: $370" starts
  between $280 and $460 and the model need not discover the order of 11 atoms from data.  (A direction, not a
  magnitude, because RMSNorm removes magnitudes.)
* **Longest prefix only**: the teaching set holds every prefix of a dialogue as its own example, but the loss
  of the longest one already covers every assistant turn of the shorter ones, so ``train_student`` keeps only
  the longest example of each dialogue: same targets, about a third of the tokens.
* **Threads and schedule fitted to a shared machine**: a few timed steps pick the torch thread count (on
  cores that other jobs also use, one thread can be several times faster than two); the cosine decay follows
  the wall clock so that it ends with the budget, whatever the step time turns out to be.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from eval.text.dialogue import PromptTemplate, default_template
from eval.text.prompt_template import save_template
from eval.student_card import save_student_card
from ppl_models import Domain

from distill.student.config import StudentConfig

# The text side lives in student_tokenizer; its names are re-exported here for callers of this module.
from distill.student.tokenizer import (  # noqa: F401
    CHOSEN_PREFIX, DESIGN_SET_PHRASES, FALLBACK_PATTERN, REJECTED_PREFIX, MAX_OPTION_TOKENS, MAX_ROUND_PHRASES, SPECIAL_TOKENS, build_tokenizer,
    chosen_descriptions, description_pattern, domain_phrases, feature_value_phrases, option_description_pattern,
    option_descriptions, option_header, set_header, split_pattern, student_chat_template, value_combinations, value_texts,
)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
def ordinal_direction(basis: torch.Tensor, normalised) -> torch.Tensor:
    """The point at angle ``normalised`` * pi/2 in the plane ``basis`` [H, 2]: [H] for one value, [N, H] for a
    tensor of N values."""
    angle = torch.as_tensor(normalised, dtype=torch.float64) * (math.pi / 2)
    cos, sin = torch.cos(angle).to(basis.dtype), torch.sin(angle).to(basis.dtype)
    return cos[..., None] * basis[:, 0] + sin[..., None] * basis[:, 1]


def ordinal_value_init(model, tokenizer, domain: Domain, seed: int) -> list[torch.Tensor]:
    """Value token embeddings start at angle (normalised value) * pi/2 in a per-feature random plane.
    Returns the planes (an orthonormal [hidden, 2] basis per feature)."""
    embeddings = model.get_input_embeddings().weight
    hidden = embeddings.shape[1]
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    planes = []
    with torch.no_grad():
        for feature, texts, merged in zip(domain.features, value_texts(domain), feature_value_phrases(domain)):
            basis, _ = torch.linalg.qr(torch.randn(hidden, 2, generator=gen))  # orthonormal plane [H, 2]
            planes.append(basis)
            scale = float(embeddings.std()) * math.sqrt(hidden)  # the norm of an ordinary embedding row
            for j, (text, normalised) in enumerate(zip(texts, feature.normalised)):
                direction = ordinal_direction(basis, normalised)
                for token in {tokenizer.convert_tokens_to_ids(text), tokenizer.convert_tokens_to_ids(merged[j])}:
                    if token != tokenizer.unk_token_id:
                        embeddings[token] = 0.5 * embeddings[token] + scale * direction
    return planes


def option_token_init(model, tokenizer, domain: Domain, planes: list[torch.Tensor],
                      template: PromptTemplate | None = None) -> None:
    """A whole-option-line token ("Hotel 2: distance ...") starts as its header's embedding ("Hotel 2:") plus
    its values' ordinal directions (each feature in its own plane, as ``ordinal_value_init``), each feature
    at an ordinary embedding's norm, without noise: lines that share values are close, a linear read-out of
    the embedding is already a weighted sum of the features, and the option number is there to copy
    (``tie_option_numbers`` ties the answer digits to the headers).  A restated choice ("Chosen: ...") is
    the same directions plus one shared marker.  Each feature at full norm, not the features summed to one
    norm: the latter left the student near chance after round 1 (see experiments/README.md)."""
    descriptions = option_descriptions(domain, template=template)
    if not descriptions:
        return
    embeddings = model.get_input_embeddings().weight
    hidden = embeddings.shape[1]
    normalised = [torch.as_tensor(f.normalised, dtype=torch.float64) for f in domain.features]
    ids = torch.tensor(tokenizer.convert_tokens_to_ids([text for text, _, _ in descriptions]))
    header_texts = [option_header(domain, k + 1, template) for k in range(domain.n_options)]
    headers = torch.tensor(tokenizer.convert_tokens_to_ids([header_texts[k] for _, k, _ in descriptions]))
    index = torch.tensor([index for _, _, index in descriptions])  # [N, F]
    with torch.no_grad():
        scale = float(embeddings.std()) * math.sqrt(hidden)  # the norm of an ordinary embedding row
        total = torch.zeros(len(descriptions), hidden)
        for f, basis in enumerate(planes):
            total += ordinal_direction(basis, normalised[f][index[:, f]])  # [N, H]
        total *= scale
        embeddings[ids] = total + embeddings[headers]
        # restated options: the same directions plus a marker per kind ("<|assistant|>": a row no rendering reads,
        # the generation prompt being empty with answer_after_options)
        for prefix, marker_token in ((CHOSEN_PREFIX, "<|user|>"), (REJECTED_PREFIX, "<|assistant|>")):
            restated = chosen_descriptions(domain, prefix=prefix)
            restated_ids = torch.tensor(tokenizer.convert_tokens_to_ids([text for text, _ in restated or []]),
                                        dtype=torch.long)
            if len(restated_ids) and bool((restated_ids != tokenizer.unk_token_id).all()):
                marker = embeddings[tokenizer.convert_tokens_to_ids(marker_token)].clone()
                embeddings[restated_ids] = total[: len(restated_ids)] + marker  # option 1 lines: same order


def student_tokenizer(domain: Domain, config: StudentConfig = StudentConfig(), template: PromptTemplate | None = None):
    """The student's tokenizer for ``domain`` and ``config`` (build_student's), its chat template marked as
    this process's own (rendered without transformers' sandbox, eval/text/chat_format.py)."""
    return build_tokenizer(domain, config.merge_feature_values, config.option_tokens, config.restate_choices,
                           config.answer_after_options, config.round_markers, template,
                           restate_rejected=config.restate_rejected, design_prompts=config.design_prompts)


def build_student(domain: Domain, config: StudentConfig = StudentConfig(), seed: int = 0,
                  template: PromptTemplate | None = None):
    """(model, tokenizer): a randomly initialised LlamaForCausalLM sized by ``config`` and the domain's
    tokenizer (see the module docstring) for the text of prompt ``template`` (default: the shipped one)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = student_tokenizer(domain, config, template)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads, max_position_embeddings=config.max_length,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=False, attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_config)
    if config.ordinal_value_init:
        planes = ordinal_value_init(model, tokenizer, domain, seed)
        if config.option_tokens:
            option_token_init(model, tokenizer, domain, planes, template)
    if config.tie_option_numbers:
        tie_option_numbers(model, tokenizer, domain, template, sets=config.design_prompts)
    if config.freeze_option_embeddings:
        freeze_option_embeddings(model, tokenizer, domain, template)
    return model, tokenizer


class _FrozenRows:
    """A gradient hook for an embedding weight: zero for the frozen rows, unchanged elsewhere."""

    def __init__(self, n_rows: int, frozen: torch.Tensor):
        self.keep = torch.ones(n_rows, 1)
        self.keep[frozen] = 0.0

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.keep.to(grad.device, grad.dtype)


def freeze_option_embeddings(model, tokenizer, domain: Domain, template: PromptTemplate | None = None) -> torch.Tensor | None:
    """Keep the input embeddings of every option-line and restated-choice token as initialised: a hook
    zeroes their gradient rows (AdamW's weight decay still shrinks them by lr x decay a step, ~4% over a
    run).  Returns the frozen token ids (None when the tokenizer has no option tokens)."""
    texts = [text for text, _, _ in option_descriptions(domain, template=template) or []]
    texts += [text for text, _ in chosen_descriptions(domain) or []]
    texts += [text for text, _ in chosen_descriptions(domain, prefix=REJECTED_PREFIX) or []]
    ids = torch.tensor(tokenizer.convert_tokens_to_ids(texts), dtype=torch.long)
    ids = ids[ids != tokenizer.unk_token_id]
    if not len(ids):
        return None
    weight = model.get_input_embeddings().weight
    weight.register_hook(_FrozenRows(weight.shape[0], ids))
    return ids


def tie_option_numbers(model, tokenizer, domain: Domain, template: PromptTemplate | None = None,
                       sets: bool = False) -> None:
    """The digit naming option k (in answers and feedback) starts with the input embedding of the option's
    header "Hotel k:", and its output row starts as that embedding too: finding "which option" then is a
    copy of the header, in both directions (read a choice, name a pick).  ``sets``: the digit names candidate
    set k (a designer's answer) and starts as the header "Set k:" instead."""
    inputs, outputs = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    n_numbers = DESIGN_SET_PHRASES if sets else min(domain.n_options, 9)
    with torch.no_grad():
        for k in range(1, n_numbers + 1):
            header = tokenizer.convert_tokens_to_ids(set_header(k, template) if sets else option_header(domain, k, template))
            digit = tokenizer.convert_tokens_to_ids(str(k))
            inputs[digit] = inputs[header]
            outputs[digit] = inputs[header] * (outputs.std() / inputs.std())


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
def longest_prefixes(lines: list[str]) -> list[str]:
    """Keep, of every dialogue, only its longest prefix example (a prefix example's messages are a prefix of
    the next one's).  Order of the kept examples is preserved."""
    kept: list[tuple[list, str]] = []
    for line in lines:
        messages = json.loads(line)["messages"]
        if kept and messages[: len(kept[-1][0])] == kept[-1][0] and len(messages) > len(kept[-1][0]):
            kept[-1] = (messages, line)
        else:
            kept.append((messages, line))
    return [line for _, line in kept]


def calibrate(model, tokenizer, examples_lines: list[str], config: StudentConfig, n_steps: int = 3):
    """(seconds per optimizer step, seconds to tokenise one example, torch threads used), timed on a copy of
    the model; sets torch's thread count to the fastest one."""
    from distill.training.chat_dataset import collate, parse_example, tokenize_dataset
    from distill.training.loss import micro_batch_loss

    sample = [parse_example(json.loads(line), "calibration") for line in examples_lines[: config.batch_size]]
    start = time.perf_counter()
    data, _ = tokenize_dataset(tokenizer, sample, config.max_length, with_soft_targets=config.kl_weight > 0)
    tokenize_s = (time.perf_counter() - start) / len(sample)
    probe = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-4)
    batch = collate(data, tokenizer.pad_token_id)
    targets = max(1, int(batch.target_mask[:, 1:].sum()))
    # On a shared CPU, intra-op threads that wait for each other can be far slower than one thread, so time
    # every thread count up to the default and keep the best.
    best = (math.inf, torch.get_num_threads())
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        times = []
        for _ in range(n_steps + 1):
            t0 = time.perf_counter()
            # the trainer's own loss (logits only where the loss reads them), so the timing is the trainer's
            loss, _, _ = micro_batch_loss(probe, batch, targets, 1, config.kl_weight)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        median = sorted(times[1:])[len(times[1:]) // 2]
        # more threads must win clearly (by 1.25x): their speed is the first to collapse when other jobs
        # start, while on idle cores two threads win by more than that.
        best = min(best, (median if threads == 1 else median / 0.8, threads))
    torch.set_num_threads(best[1])
    return best[0], tokenize_s, best[1]


def train_student(domain: Domain, dataset_path, out_dir, budget_minutes: float | None = None,
                  config: StudentConfig = StudentConfig(), seed: int = 0, resume: bool = False,
                  max_steps: int | None = None, template: PromptTemplate | None = None):
    """Build the student and train it on ``dataset_path`` (a teaching-set JSONL) with distill.training.trainer.train
    (method "full") so that everything, tokenisation and saving included, fits ``budget_minutes`` (default:
    the config's).

    ``max_steps`` overrides the budget-fitted number of steps.  ``resume=True`` continues a run in
    ``out_dir`` (same config and seed; the schedule of the first run is kept).  ``template``: the prompt template
    the teaching set was written with (the student's tokenizer is made for its text).  Returns the TrainResult."""
    from distill.training.chat_dataset import tokenize_workers
    from distill.training.trainer import train
    from distill.training.callbacks import clock_cosine
    from eval.io_utils import atomic_write_text

    budget_minutes = config.budget_minutes if budget_minutes is None else budget_minutes
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [line for line in Path(dataset_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if config.longest_prefix_only:
        lines = longest_prefixes(lines)
    data_path = out_dir / "student-train.jsonl"
    if not (resume and data_path.exists()):
        atomic_write_text(data_path, "".join(line + "\n" for line in lines))
    model, tokenizer = build_student(domain, config, seed, template)

    plan_path = out_dir / "student_plan.json"
    if resume and plan_path.exists():
        plan = json.loads(plan_path.read_text())
        torch.set_num_threads(plan.get("threads", torch.get_num_threads()))
    else:
        step_s, tokenize_s, threads = calibrate(model, tokenizer, lines, config)
        elapsed = time.perf_counter() - start
        usable = budget_minutes * 60 * (1 - config.budget_margin) - elapsed - tokenize_s * len(lines) / tokenize_workers()
        # with no max_steps, a cap only: the budget (and the clock schedule) ends the run
        plan = {"max_steps": max_steps or max(1, int(10 * usable / step_s)), "seconds_per_step": step_s,
                "tokenize_seconds_per_example": tokenize_s, "threads": threads, "examples": len(lines),
                "student_config": config.__dict__, "budget_minutes": budget_minutes}
        atomic_write_text(plan_path, json.dumps(plan, indent=2) + "\n")
    remaining = max(0.05, budget_minutes - (time.perf_counter() - start) / 60)
    run_config = dataclasses.replace(config, max_steps=plan["max_steps"], seed=seed,
                                     budget_minutes=remaining if math.isfinite(remaining) else None,
                                     save_every_steps=max(50, plan["max_steps"] // 4))
    # The step time on a shared CPU drifts by several x within minutes, so the cosine follows the clock: it
    # reaches its floor when the budget ends, whatever number of steps that turns out to be.  The Trainer is
    # given this schedule (a fixed max_steps keeps the Trainer's own warm-up + cosine by steps).
    end = time.perf_counter() + remaining * 60 * (1 - config.budget_margin / 2)
    schedule = clock_cosine(config.warmup_steps, config.min_lr_ratio, end) if max_steps is None else None
    result = train(run_config, data_path, out_dir, model=(model, tokenizer), resume=resume, lr_lambda=schedule)
    if (out_dir / "model").is_dir():  # its tokenizer is made for this text: evaluate prompts it with the same
        save_template(template or default_template(), out_dir / "model")
        # its tokenizer is made for this domain's words (evaluate checks) and its template from these options
        save_student_card(domain, out_dir / "model", getattr(tokenizer, "bayes_teach_template_options", None))
    return result
