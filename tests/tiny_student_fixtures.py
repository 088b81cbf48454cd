"""Tiny, local, random-weight students for the training tests: a BPE tokenizer trained in memory on hotel
dialogue text, a 2-layer LLaMA, and JSONL chat datasets.  Nothing is downloaded."""
from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
# A small append-only chat template (the other tests use the plain fallback of eval.text.chat_format).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def hotel_conversation(seed: int, rounds: int = 2) -> dict:
    """A multi-round recommendation dialogue with a soft target on every assistant message."""
    messages, soft_targets = [], []
    for r in range(rounds):
        messages.append({"role": "user", "content": f"Round {r + 1}: hotels cost {seed % 5 + r}, {seed % 3 + 2} and "
                                                     f"{r + 4} dollars. Which hotel is best for me?"})
        best = (seed + r) % 3 + 1
        messages.append({"role": "assistant", "content": f"The best option is Hotel {best}."})
        probs = [0.1, 0.1, 0.1]
        probs[best - 1] = 0.8
        soft_targets.append({"message_index": len(messages) - 1,
                             "candidates": [f"The best option is Hotel {k}." for k in (1, 2, 3)], "probs": probs})
        messages.append({"role": "user", "content": f"I chose Hotel {(seed + r + 1) % 3 + 1}."})
    return {"messages": messages, "soft_targets": soft_targets}


def build_tiny_tokenizer(chat_template: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [json.dumps(hotel_conversation(s, rounds=3)) for s in range(6)] + ["### System:\n### User:\n### Assistant:\n"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def save_tiny_student(directory: Path, chat_template: bool = False, hidden: int = 64) -> Path:
    """A tiny LLaMA + tokenizer saved as a local model directory (hidden 64: 4-bit blocks need >= 64)."""
    tokenizer = build_tiny_tokenizer(chat_template)
    model = build_tiny_llama(len(tokenizer), hidden=hidden)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
