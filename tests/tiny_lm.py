"""Fixture builders for tests and benchmarks that need a causal LM without any download.

Everything here is built locally and deterministically: a byte-level BPE tokenizer trained on a few
synthetic flight-booking dialogues (wrapped in ``PreTrainedTokenizerFast``), a tiny ``LlamaForCausalLM``
with random weights, saved to a directory so that ``eval.lm.scorer.load_causal_lm`` loads it from a local path,
and multi-round dialogue requests in the shape the scorer expects.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

# An append-only chat template: rendering a longer conversation only ever appends text.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHAT_MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

_AIRLINES = ["Delta", "United", "Lufthansa", "Emirates", "Qantas", "Iberia"]
_FILLER = (
    "the a of to and in for on with at by from about as into like through after over between out against "
    "during without before under around among trip price stops duration departure arrival morning evening "
    "night cheap expensive short long direct layover seat window aisle luggage meal comfort schedule "
    "prefer choose option options flight flights airline ticket cost hours minutes one two three zero "
    "user assistant recommend recommended best because would you your my I we they this that these those "
    "is are was were be been being have has had do does did will can could should may might must shall "
    "travel city airport gate boarding class economy business first premium fare refund change policy "
    "weather delay early late quick slow budget value quality service friendly crew landing takeoff"
).split()


def flight_round_text(rng: random.Random, n_options: int, n_words: int) -> str:
    """A user turn of about ``n_words`` words describing ``n_options`` flights and asking for a choice."""
    lines = ["Help me choose a flight. Here are the options:"]
    for option in range(1, n_options + 1):
        stops = rng.randint(0, 2)
        lines.append(
            f"Flight {option}: {rng.choice(_AIRLINES)}, departure {rng.randint(5, 22)}:{rng.choice(['00', '15', '30', '45'])}, "
            f"duration {rng.randint(1, 14)} hours, {stops} stops, price ${rng.randint(90, 1200)}."
        )
    used = sum(len(line.split()) for line in lines)
    filler = " ".join(rng.choice(_FILLER) for _ in range(max(0, n_words - used - 8)))
    lines.append(filler.capitalize() + ".")
    lines.append("Which flight is the best option?")
    return "\n".join(lines)


def option_answer(noun: str, index: int) -> str:
    """The canonical assistant answer naming 0-based option ``index``."""
    return f"The best option is {noun} {index + 1}."


def flight_dialogue_messages(
    seed: int, n_rounds: int, n_options: int = 3, n_words: int = 40, system: bool = False
) -> list[list[dict]]:
    """The ``messages`` of each round of one synthetic dialogue; round r+1 extends round r by the
    assistant's answer to round r and a new user turn."""
    rng = random.Random(seed)
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": "You are a helpful travel assistant."})
    rounds = []
    for round_index in range(n_rounds):
        if round_index > 0:
            messages = messages + [
                {"role": "assistant", "content": option_answer("Flight", rng.randrange(n_options))},
                {"role": "user", "content": "The correct answer was Flight 2. " + flight_round_text(rng, n_options, n_words)},
            ]
        else:
            messages = messages + [{"role": "user", "content": flight_round_text(rng, n_options, n_words)}]
        rounds.append(list(messages))
    return rounds


def flight_dialogue_requests(n_dialogues: int, n_rounds: int, n_options: int = 3, n_words: int = 40, seed: int = 0):
    """``n_dialogues`` DialogueRequests, each of ``n_rounds`` rounds with ``n_options`` candidate answers."""
    from eval.lm import DialogueRequest, RoundRequest

    candidates = [option_answer("Flight", k) for k in range(n_options)]
    return [
        DialogueRequest(
            rounds=[
                RoundRequest(messages=messages, candidates=list(candidates))
                for messages in flight_dialogue_messages(seed + d, n_rounds, n_options, n_words, system=d % 2 == 1)
            ]
        )
        for d in range(n_dialogues)
    ]


def _training_corpus(n_texts: int = 60) -> list[str]:
    rng = random.Random(1234)
    texts = [flight_round_text(rng, 3, 60) for _ in range(n_texts)]
    texts += [option_answer("Flight", k) for k in range(5)] + ["The correct answer was Flight 2.", "option 1 2 3"]
    return texts


def build_tokenizer(chat_template: bool = True, vocab_size: int = 600, pad_token: bool = True):
    """A byte-level BPE tokenizer (any text encodes, decoding is exact) with bos ``<s>``, eos ``</s>``,
    optional pad ``<pad>``, the chat markers as special tokens, and optionally ``TINY_CHAT_TEMPLATE``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>"] + CHAT_MARKERS
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>" if pad_token else None,
        additional_special_tokens=CHAT_MARKERS,
        clean_up_tokenization_spaces=False,
    )
    if chat_template:
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer, hidden_size: int = 32, n_layers: int = 2, n_heads: int = 4, seed: int = 0,
                initializer_range: float = 0.3, attn_implementation: str = "sdpa"):
    """A tiny LlamaForCausalLM with random (seeded) weights.  The large ``initializer_range`` makes its
    next-token distributions far from uniform, so that score comparisons are not trivially equal."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=max(1, n_heads // 2),
        max_position_embeddings=8192,
        initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def save_tiny_lm(directory, chat_template: bool = True, pad_token: bool = True, **model_kwargs) -> Path:
    """Build a tokenizer and a tiny model and save both to ``directory``; returns the directory."""
    directory = Path(directory)
    tokenizer = build_tokenizer(chat_template=chat_template, pad_token=pad_token)
    model = build_model(tokenizer, **model_kwargs)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_lora_adapter(base_directory, adapter_directory, seed: int = 0) -> Path:
    """A LoRA adapter (non-zero weights) for the model saved in ``base_directory``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_directory))
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(str(adapter_directory))
    return Path(adapter_directory)


def write_gguf(path, architecture: str):
    """A GGUF file with a header and one tensor (readable by gguf, not a whole model)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
