"""The embedded student's settings: its shape, its tokenizer choices and its training defaults, in one
``StudentConfig`` that extends the trainer's ``TrainConfig`` (the same fields, read by the same trainer), saved
inside every run.  Why each default is what it is: the comment above it (the measurements behind them:
experiments/README.md, "The embedded student's design").
"""
from __future__ import annotations

from dataclasses import dataclass

from distill.training.config import DEFAULT_BUDGET_MINUTES, TrainConfig


@dataclass
class StudentConfig(TrainConfig):
    """The student's shape and tokenizer choices, and its training settings: a TrainConfig (the same fields,
    read by the same trainer) whose defaults are the student's."""
    # --- training: TrainConfig's fields with the student's defaults ----------------------------------
    model_name_or_path: str = "embedded-student"
    # every weight of a from-scratch model trains, in float32 (the precision the defaults below were chosen in)
    method: str = "full"
    dtype: str = "float32"
    # Longest sequence; a 6-round hotel dialogue is at most ~51 tokens with option tokens (one per option
    # line), 512 leaves headroom for renderings without them and longer dialogues.  Also
    # max_position_embeddings.
    max_length: int = 512
    # Peak AdamW learning rate: tiny from-scratch models tolerate (and, with few steps, need) ~1e-3.
    learning_rate: float = 2e-3
    # Conversations per optimizer step: averages over enough users for a stable gradient.
    batch_size: int = 32
    # Linear warm-up before the cosine decay (a cold Adam with a high lr diverges otherwise).
    warmup_steps: int = 30
    # Cosine decays to learning_rate * min_lr_ratio when the budget ends (the clock schedule).
    min_lr_ratio: float = 0.05
    # Mild decoupled weight decay for the from-scratch weights.
    weight_decay: float = 0.01
    # Adam's second-moment decay.  0.95 rather than the usual 0.999: with 0.999 a token seen once in a while
    # gets a step of ~3x the learning rate per coordinate each time it appears (its second moment has decayed
    # towards zero since its last appearance); 0.95 keeps such steps near the learning rate (see
    # experiments/README.md).
    adam_beta2: float = 0.95
    # The wall-clock budget of train_student (the whole call: tokenising, calibration and saving included).
    budget_minutes: float | None = DEFAULT_BUDGET_MINUTES
    # Log every 10 steps; keep one checkpoint (the run saves about four times).
    log_every_steps: int = 10
    keep_last_checkpoints: int = 1

    # --- the model -----------------------------------------------------------------------------------
    # Width of the residual stream.  The task has few concepts (4 features x <= 11 values); a narrow, shallow
    # model fits more steps into a CPU budget, and wider or deeper ones did no better within the same budget
    # (see experiments/README.md).
    hidden_size: int = 128
    # Transformer blocks.  Comparing options within a round and accumulating feedback across rounds needs
    # a few hops of attention (option values -> option, choice -> chosen option, preference -> new options).
    num_layers: int = 4
    # Attention heads (head dim 32): several heads let one layer attend to different features at once.
    num_heads: int = 4
    # MLP width (3x hidden, LLaMA's SwiGLU usually uses ~2.7x).
    intermediate_size: int = 384
    # Option-line and restated-choice embeddings stay as initialised (header + ordinal value directions, see
    # option_token_init): ~21,800 rows each seen ~30 times in a run would otherwise each take ~30 Adam steps
    # of noise as large as their structure (see experiments/README.md).  Everything else, the digit and
    # header rows included, trains.
    freeze_option_embeddings: bool = True
    # Soft-target KL weight (used only if the data has soft targets; the pipeline sets 1.0 for the soft
    # teacher).  The answers are one token, so the trainer scores the candidates on the conversation's own
    # row (no extra rows).  Soft teaching's candidates cost tokenising time out of the same budget, so it
    # fits fewer steps than hard picks (see experiments/README.md).
    kl_weight: float = 0.0
    # One token per "feature: value" (", price: $370"): ~5 tokens an option instead of ~12, so ~half the
    # sequence length, and the answer needs to attend to fewer, more informative tokens.
    merge_feature_values: bool = True
    # One token per whole option description ("distance to downtown: 3 miles, price: $460, rating: 2 stars,
    # amenities: free parking") when the domain has at most MAX_OPTION_TOKENS value combinations (flight 3,993,
    # hotel 5,445); its embedding starts as the sum of its values' ordinal embeddings.  An option is then one
    # position that attention can compare, pick or copy directly, instead of 4-8 positions to pool first.
    option_tokens: bool = True
    # The chat template restates, at the start of each feedback turn, the option the user says they prefer, as
    # one "Chosen: <description>" token (with option tokens).  No information is added (the option is in the
    # previous turn), but finding it there takes an attention hop keyed on the option number that a model
    # trained from scratch does not find within a CPU budget: without the restated option it learns round 1
    # (no feedback needed) and little after (see experiments/README.md).
    restate_choices: bool = True
    # With restate_choices: the options the user did not choose follow it, as "Rejected: <description>" tokens
    # (frozen, like the option lines, with a marker of their own), so that each comparison the feedback
    # reveals (chosen over rejected) sits at adjacent positions instead of behind a search of the turn before.
    # No information is added, and no reliable gain was found for the longer sequences (see
    # experiments/README.md): off.
    restate_rejected: bool = False
    # The answer's option number comes right after the last option line, with no question, end marker or
    # "The best option is Hotel" in between (student_chat_template).  A constant token has nothing of its
    # own to compute with in its first layer; the last option line has its features and number there to
    # compare with the other options from layer one (see experiments/README.md).
    answer_after_options: bool = True
    # Keep the "Round k." lines (with answer_after_options; see student_chat_template).  Off: they add a
    # token per round and did not help (see experiments/README.md).
    round_markers: bool = False
    # The tokenizer and chat template read a designer's prompt too (the candidate sets, "Set k:", the answer as
    # the set's number after the last option line; student_chat_template), and the answer digits start as the
    # "Set k:" headers rather than the option headers (tie_option_numbers).  distill --task design sets it; off
    # otherwise, so that a recommending student's vocabulary, and with it its initialisation, stays as it is.
    design_prompts: bool = False
    # Start value embeddings on an ordinal quarter circle (see the module docstring).
    ordinal_value_init: bool = True
    # Digit k starts as the embedding of "Hotel k:" (input and output); see tie_option_numbers.
    tie_option_numbers: bool = True
    # Keep only the longest prefix of each dialogue (see the module docstring).
    longest_prefix_only: bool = True
    # Fraction of the budget kept free for tokenisation, calibration and saving.
    budget_margin: float = 0.08
