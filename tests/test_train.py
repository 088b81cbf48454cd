"""Tests of distill/ training: targets, errors, the soft-target KL, determinism, resume, outputs, QLoRA,
and a 2-process accelerate run.  Tiny random-weight LLaMA students built locally (tiny_student_fixtures)."""
from __future__ import annotations

import json
import math
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from eval import io_utils  # noqa: E402
from distill.training.chat_dataset import (  # noqa: E402
    DatasetFormatError, EmptyLossMaskError, candidate_token_ids, collate, load_chat_jsonl, message_start_positions,
    parse_example, tokenize_dataset,
)
from distill.training.loss import micro_batch_loss  # noqa: E402
from distill.training.trainer import train  # noqa: E402
from distill.training.config import TrainConfig  # noqa: E402
from eval.text.chat_format import tokenize_chat  # noqa: E402
from tiny_student_fixtures import (  # noqa: E402
    build_tiny_llama, build_tiny_tokenizer, hotel_conversation, write_jsonl,
)
from png_checks import check_plot_png  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py: tiny models, one thread


def small_config(**overrides) -> TrainConfig:
    values = dict(method="lora", dtype="float32", lora_r=4, lora_alpha=8, lora_dropout=0.1, learning_rate=5e-3, warmup_steps=1,
                  batch_size=2, grad_accum_steps=2, max_steps=6, save_every_steps=3, kl_weight=0.5)
    values.update(overrides)
    return TrainConfig(**values)


def trainable_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def logged_losses(out_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------
# Targets and data errors
# ---------------------------------------------------------------------------------------------------
def test_targets_are_exactly_the_assistant_tokens_and_padding_changes_nothing():
    tokenizer = build_tiny_tokenizer()
    conversations = [hotel_conversation(1, rounds=2), hotel_conversation(4, rounds=1)]
    examples = [parse_example(c, f"mem:{i}") for i, c in enumerate(conversations)]
    data, report = tokenize_dataset(tokenizer, examples, max_length=1024, with_soft_targets=False)
    assert report.truncated_examples == []
    for tokenized, conversation in zip(data, conversations):
        assert (tokenized.input_ids, tokenized.target_mask) == tokenize_chat(tokenizer, conversation["messages"])
        answers = [m["content"] for m in conversation["messages"] if m["role"] == "assistant"]
        targets = [i for i, is_target in zip(tokenized.input_ids, tokenized.target_mask) if is_target]
        assert tokenizer.decode(targets) == "".join(f"{a}</s>\n\n" for a in answers)


    # The cross-entropy equals HF's loss with labels -100 everywhere but the assistant tokens, and a padded
    # batch of two conversations gives the token-weighted mean of the two alone.
    model = build_tiny_llama(len(tokenizer))
    per_example = []
    for tokenized in data:
        batch = collate([tokenized], tokenizer.pad_token_id)
        labels = torch.where(batch.target_mask, batch.input_ids, torch.full_like(batch.input_ids, -100))
        with torch.no_grad():
            hf_loss = model(input_ids=batch.input_ids, labels=labels).loss.item()
            _, sft, _ = micro_batch_loss(model, batch, int(batch.target_mask[:, 1:].sum()), 1, 0.0)
        assert sft.item() == pytest.approx(hf_loss, abs=1e-5)
        per_example.append((sft.item(), int(batch.target_mask[:, 1:].sum())))
    batch = collate(data, tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 2 and not batch.attention_mask.all()  # really padded
    total = sum(n for _, n in per_example)
    with torch.no_grad():
        _, sft, _ = micro_batch_loss(model, batch, total, 1, 0.0)
    assert sft.item() == pytest.approx(sum(loss * n for loss, n in per_example) / total, abs=1e-5)

def test_choice_tokens_are_the_answer_tokens_that_differ_and_their_loss_is_logged_apart(tmp_path):
    """mark_choice_tokens: the answers' fixed words are not choice tokens, the option number is; the loss on
    the choice tokens equals a direct log-softmax at those positions; the trainer logs it every step."""
    from distill.training.chat_dataset import answer_spans

    tokenizer = build_tiny_tokenizer()
    conversations = [hotel_conversation(s, rounds=2) for s in range(6)]
    examples = [parse_example(c, f"mem:{i}") for i, c in enumerate(conversations)]
    data, _ = tokenize_dataset(tokenizer, examples, max_length=1024, with_soft_targets=False)
    fixed, numbers = set(), []
    for tokenized, conversation in zip(data, conversations):
        answers = [m["content"] for m in conversation["messages"] if m["role"] == "assistant"]
        spans = answer_spans(tokenized.target_mask)
        assert len(spans) == len(answers)
        for (start, length), answer in zip(spans, answers):
            ids = tokenized.input_ids[start:start + length]
            marks = tokenized.choice_mask[start:start + length]
            fixed.add(tuple(i for i, m in zip(ids, marks) if not m))
            numbers.append((answer[-2], tokenizer.decode([i for i, m in zip(ids, marks) if m])))
    assert len(fixed) == 1  # every answer's other tokens are the same words
    assert "The best option is" in tokenizer.decode(list(next(iter(fixed))))
    assert all(digit in choice for digit, choice in numbers) and len({c for _, c in numbers}) == 3
    # the diagnostic against a direct computation
    model = build_tiny_llama(len(tokenizer))
    batch = collate(data, tokenizer.pad_token_id)
    parts = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        micro_batch_loss(model, batch, int(batch.target_mask[:, 1:].sum()), 1, 0.0, choice_parts=parts)
        log_probs = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.log_softmax(-1)
    rows, positions = batch.choice_mask.nonzero(as_tuple=True)
    expected = -log_probs[rows, positions - 1, batch.input_ids[rows, positions]].double()
    assert parts[1] == len(expected) and parts[0].item() == pytest.approx(expected.sum().item(), rel=1e-5)
    # in the training log, every step
    data_path = write_jsonl(tmp_path / "train.jsonl", conversations)
    train(small_config(max_steps=2, kl_weight=0.0), data_path, tmp_path / "run", model=(model, tokenizer))
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert records and all(0 < r["choice_loss"] != r["sft_loss"] for r in records)


def test_tokenising_in_forked_workers_gives_the_serial_result():
    tokenizer = build_tiny_tokenizer(chat_template=True)
    examples = [parse_example(hotel_conversation(s, rounds=1 + s % 3), f"mem:{s}") for s in range(240)]
    serial, serial_report = tokenize_dataset(tokenizer, examples, max_length=64, with_soft_targets=True)
    forked, forked_report = tokenize_dataset(tokenizer, examples, max_length=64, with_soft_targets=True, workers=2)
    assert serial_report.truncated_examples and forked_report == serial_report  # some are cut: the report too
    assert forked == serial and [t.index for t in forked] == list(range(240))


def test_truncation_is_reported_and_an_empty_loss_mask_raises_naming_the_examples(student_dir, tmp_path):
    tokenizer = build_tiny_tokenizer()
    long_answer_late = {"messages": [{"role": "user", "content": "hotel " * 120},
                                     {"role": "assistant", "content": "The best option is Hotel 1."}]}
    examples = [parse_example(c, f"mem:{i}") for i, c in enumerate([hotel_conversation(0, rounds=3), long_answer_late])]
    full_length = len(tokenize_chat(tokenizer, examples[0].messages)[0])
    cut_at = message_start_positions(tokenizer, examples[0].messages)[7] + 3  # inside the last answer
    data, report = tokenize_dataset(tokenizer, examples[:1], max_length=cut_at, with_soft_targets=True)
    assert report.truncated_examples == [0] and report.tokens_dropped == full_length - cut_at
    assert report.soft_targets_dropped == 1 and len(data[0].soft_targets) == 2  # the last round's no longer fits
    assert len(data[0].input_ids) == cut_at and data[0].target_mask[-3:] == [True] * 3

    path = write_jsonl(tmp_path / "d.jsonl", [hotel_conversation(0), long_answer_late, hotel_conversation(1)])
    with pytest.raises(EmptyLossMaskError, match=r"dataset indices: 1 \(.*d\.jsonl:2\)"):
        train(small_config(max_length=64), path, tmp_path / "out", model=str(student_dir))


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ("{not json", "not valid JSON"),
        ('{"conversation": []}', '"messages"'),
        ('{"messages": [{"role": "bot", "content": "hi"}]}', "role 'bot'"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], '
         '"soft_targets": [{"message_index": 0, "candidates": ["b"], "probs": [1.0]}]}', "message_index"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], '
         '"soft_targets": [{"message_index": 1, "candidates": ["b", "c"], "probs": [0.5, 0.2]}]}', "sum to"),
    ],
)
def test_bad_dataset_lines_are_reported_by_file_and_line(tmp_path, bad_line, problem):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(hotel_conversation(0)) + "\n\n" + bad_line + "\n")
    with pytest.raises(DatasetFormatError) as error:
        load_chat_jsonl(path)
    assert f"{path}:3:" in str(error.value) and problem in str(error.value)


def test_global_batch_schedule_recipe_checks_and_atomic_directories(tmp_path):
    import time

    from distill.training.callbacks import clock_cosine
    from distill.training.config import ConfigError

    # the recipe's global batch holds whatever the number of processes: accumulation is computed
    config = TrainConfig(batch_size=4, global_batch_size=128)
    assert [config.accumulation_steps(n) for n in (1, 2, 8, 32)] == [32, 16, 4, 1]
    with pytest.raises(ConfigError, match="not a multiple"):
        config.accumulation_steps(3)
    assert TrainConfig(grad_accum_steps=3).accumulation_steps(4) == 3
    # the clock schedule: transformers' linear warm-up by steps, then a cosine that has ended at the deadline
    factor = clock_cosine(warmup_steps=4, min_lr_ratio=0.1, end=time.perf_counter() - 1)
    assert [factor(0), factor(2), factor(4), factor(50)] == pytest.approx([0.0, 0.5, 0.1, 0.1])
    late = clock_cosine(warmup_steps=0, min_lr_ratio=0.1, end=time.perf_counter() + 3600)
    assert late(0) == pytest.approx(1.0, abs=1e-4)  # the decay starts at the top
    # recipes: unknown keys and wrong types are refused by name
    recipe = tmp_path / "recipes" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text("method: full\nlearning_rate: 2.0e-6\nglobal_batch_size: 128\nwarmup_ratio: 0.1\n")
    assert TrainConfig.from_recipe(recipe, seed=3) == TrainConfig(method="full", learning_rate=2e-6, global_batch_size=128,
                                                                 warmup_ratio=0.1, seed=3)
    for text, problem in [("learnin_rate: 0.1\n", "unknown key"), ("batch_size: four\n", "batch_size must be int"),
                          ("epochs: true\n", "epochs must be"), ("budget_minutes: 0\n", "budget must be > 0")]:
        recipe.write_text(text)
        with pytest.raises(ConfigError, match=problem):
            TrainConfig.from_recipe(recipe)

    with pytest.raises(RuntimeError):
        with io_utils.atomic_directory(tmp_path / "atomic" / "out") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash while writing")
    assert list((tmp_path / "atomic").iterdir()) == []  # nothing half-written is left, not even the temporary directory
    with io_utils.atomic_directory(tmp_path / "atomic" / "out") as tmp:
        (tmp / "whole.bin").write_bytes(b"x")
    assert io_utils.is_complete(tmp_path / "atomic" / "out") and (tmp_path / "atomic" / "out" / "whole.bin").is_file()


# ---------------------------------------------------------------------------------------------------
# Soft targets: the KL term, against an independent computation
# ---------------------------------------------------------------------------------------------------
def candidate_score_independently(model, tokenizer, messages, index: int, candidate: str) -> float:
    """Summed log-prob of the candidate's tokens (those of the last message) in its own unpadded pass."""
    ids, mask = tokenize_chat(tokenizer, messages[:index] + [{"role": "assistant", "content": candidate}])
    first = len(mask) - next(i for i, m in enumerate(reversed(mask)) if not m)  # start of the trailing run
    with torch.no_grad():
        log_probs = model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
    return sum(log_probs[t - 1, ids[t]].item() for t in range(first, len(ids)))


def kl_per_soft_target_independently(model, tokenizer, conversations) -> list[float]:
    """KL(target || softmax of the candidates' independent scores), one value per soft target, in order."""
    expected = []
    for conversation in conversations:
        for target in conversation["soft_targets"]:
            scores = [candidate_score_independently(model, tokenizer, conversation["messages"],
                                                    target["message_index"], c) for c in target["candidates"]]
            log_norm = math.log(sum(math.exp(s - max(scores)) for s in scores)) + max(scores)
            expected.append(sum(p * (math.log(p) - (s - log_norm)) for p, s in zip(target["probs"], scores) if p > 0))
    return expected


@pytest.mark.parametrize("chat_template", [False, True])
def test_kl_term_matches_an_independent_computation(chat_template):
    tokenizer = build_tiny_tokenizer(chat_template)
    model = build_tiny_llama(len(tokenizer), seed=3)
    conversations = [hotel_conversation(2, rounds=2), hotel_conversation(5, rounds=1)]
    conversations[1]["soft_targets"][0]["probs"] = [0.0, 0.25, 0.75]  # a zero-probability candidate too
    examples = [parse_example(c, f"mem:{i}") for i, c in enumerate(conversations)]
    data, _ = tokenize_dataset(tokenizer, examples, max_length=1024, with_soft_targets=True)
    batch = collate(data, tokenizer.pad_token_id)
    with torch.no_grad():
        _, _, kl = micro_batch_loss(model, batch, 1, batch.num_soft_targets, kl_weight=1.0)

    expected = kl_per_soft_target_independently(model, tokenizer, conversations)
    assert len(expected) == 3 and kl.item() > 0.01
    assert kl.item() == pytest.approx(sum(expected) / len(expected), abs=1e-5)



@pytest.mark.parametrize("student", [False, True])
def test_soft_target_tokens_follow_the_scoring_definition(student):
    if student:
        from distill.student.model import build_student
        from distill.teaching_data import build_examples
        from ppl_models import get_domain

        hotel = get_domain("hotel")
        _, tokenizer = build_student(hotel, seed=0)
        conversations = build_examples(hotel, "soft", torch.tensor([30, 310]), 2, seed=2, prefixes="longest")
    else:
        tokenizer = build_tiny_tokenizer(chat_template=True)
        conversations = [hotel_conversation(s, rounds=3) for s in range(4)]
    data, _ = tokenize_dataset(tokenizer, [parse_example(c, f"mem:{i}") for i, c in enumerate(conversations)],
                               max_length=1024, with_soft_targets=True)
    for tokenized, conversation in zip(data, conversations):
        messages = conversation["messages"]
        starts = message_start_positions(tokenizer, messages)
        assert len(tokenized.soft_targets) == len(conversation["soft_targets"])
        for target, raw in zip(tokenized.soft_targets, conversation["soft_targets"]):
            i = raw["message_index"]
            assert target.prefix_length == starts[i]
            assert target.candidate_ids == [candidate_token_ids(tokenizer, messages, i, c, tokenized.input_ids[: starts[i]])
                                            for c in raw["candidates"]]

def test_one_token_candidates_are_scored_on_the_conversation_row_without_rows_of_their_own():
    from distill.student.model import StudentConfig, build_student
    from distill.teaching_data import build_examples
    from ppl_models import get_domain

    hotel = get_domain("hotel")
    model, tokenizer = build_student(hotel, StudentConfig(hidden_size=32, num_layers=1, intermediate_size=64), seed=2)
    conversations = build_examples(hotel, "soft", torch.tensor([8, 420]), 1, seed=6, prefixes="longest")
    data, _ = tokenize_dataset(tokenizer, [parse_example(c, f"mem:{i}") for i, c in enumerate(conversations)],
                               max_length=512, with_soft_targets=True)
    inline = collate(data, tokenizer.pad_token_id)
    rows = collate(data, tokenizer.pad_token_id, inline_single_tokens=False)
    # the student's answers are one token: 2 dialogues x 5 soft targets, none needing a row
    assert inline.inline_row.tolist() == [0] * 5 + [1] * 5 and inline.candidate_row.numel() == 0
    assert len(inline.input_ids) == 2 and len(rows.input_ids) == 2 + 10 * 3 and rows.num_soft_targets == 10
    expected = kl_per_soft_target_independently(model, tokenizer, conversations)
    grads = []
    for batch in (inline, rows):
        model.zero_grad()
        loss, _, kl = micro_batch_loss(model, batch, 10, batch.num_soft_targets, kl_weight=1.0)
        loss.backward()
        assert kl.item() == pytest.approx(sum(expected) / 10, abs=1e-5) and kl.item() > 0.01
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))

# ---------------------------------------------------------------------------------------------------
# Determinism, resume, outputs
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def straight_run(student_dir, dataset, tmp_path_factory):
    return train(small_config(), dataset, tmp_path_factory.mktemp("straight"), model=str(student_dir))


@pytest.mark.slow
def test_same_seed_gives_same_losses_and_weights(straight_run, student_dir, dataset, tmp_path):
    again = train(small_config(), dataset, tmp_path / "again", model=str(student_dir))
    assert again.losses == straight_run.losses and len(again.losses) == 6
    for name, weight in trainable_weights(straight_run.model).items():
        assert torch.equal(weight, trainable_weights(again.model)[name]), name
    other_seed = train(small_config(seed=1, max_steps=2), dataset, tmp_path / "seed1", model=str(student_dir))
    assert other_seed.losses != straight_run.losses[:2]


def test_resume_after_a_crash_continues_to_the_same_weights_and_losses(straight_run, student_dir, dataset, tmp_path):
    class Crash(Exception):
        pass

    def crash_after_step_4(record):  # step 3 was checkpointed, step 4 was not
        if record["step"] == 4:
            raise Crash

    out = tmp_path / "interrupted"
    with pytest.raises(Crash):
        train(small_config(), dataset, out, model=str(student_dir), on_step_end=crash_after_step_4)
    # What a crash in the middle of saving step 5 would leave (no COMPLETE marker): not a checkpoint to resume.
    (out / "checkpoints" / "checkpoint-5").mkdir()
    (out / "checkpoints" / "checkpoint-5" / "trainer_state.json").write_text("{")
    assert io_utils.last_complete_checkpoint(out / "checkpoints").name == "checkpoint-3"

    resumed = train(small_config(), dataset, out, model=str(student_dir), resume=True)
    assert resumed.steps == 6 and resumed.steps_this_run == 3  # steps 1-3 were not redone
    assert logged_losses(out) == pytest.approx(logged_losses(straight_run.out_dir), abs=1e-6)
    assert resumed.losses == pytest.approx(straight_run.losses[3:], abs=1e-6)
    for name, weight in trainable_weights(straight_run.model).items():
        torch.testing.assert_close(trainable_weights(resumed.model)[name], weight, atol=1e-6, rtol=0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-3") and summary["steps"] == 6


def test_outputs_adapter_in_peft_layout_log_and_summary(straight_run, student_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = straight_run.adapter_dir
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    linear_layers = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # "all-linear"
    assert {name.rsplit(".", 1)[-1] for name in adapter_config["target_modules"]} == linear_layers
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)  # saved beside the adapter
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student_dir), adapter_dir).eval()
    ids = torch.tensor([tokenize_chat(tokenizer, hotel_conversation(3)["messages"])[0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, straight_run.model.eval()(input_ids=ids).logits)

    log = [json.loads(line) for line in (straight_run.out_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6] and all(r["tokens_per_s"] > 0 for r in log)
    # transformers' warm-up (lr * s / warmup_steps at 0-based step s), then cosine to 10% over steps 1..5
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 5)) for s in range(5)]
    assert [r["lr"] for r in log] == pytest.approx([0.0] + [5e-3 * c for c in cosine])
    assert list((straight_run.out_dir / "tensorboard").glob("events.out.tfevents.*"))  # tensorboard, by default
    check_plot_png(straight_run.out_dir / "tensorboard" / "loss.png", (6, 3.5), dpi=100, series=1, exact=False)
    summary = json.loads((straight_run.out_dir / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["tokens"] == straight_run.tokens == sum(r["tokens"] for r in log) > 0
    # the peak of this process, which ran the training: more than torch alone takes, at most what the OS reports now
    assert 100 < summary["peak_rss_mb"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    saved_config = TrainConfig.from_json_file(straight_run.out_dir / "train_config.json")
    assert saved_config.model_name_or_path == str(student_dir) and saved_config.kl_weight == 0.5
    kept = io_utils.complete_checkpoints(straight_run.out_dir / "checkpoints")
    assert [step for step, _ in kept] == [3, 6]
    assert TrainConfig.from_json_file(kept[-1][1] / "train_config.json") == saved_config


@pytest.mark.slow
def test_budget_stops_cleanly_and_full_method_saves_a_model(student_dir, dataset, tmp_path):
    from transformers import AutoModelForCausalLM

    # the budget is judged after each step (the Trainer runs at least one), and the stop is saved
    stopped = train(small_config(budget_minutes=1e-9), dataset, tmp_path / "budget", model=str(student_dir))
    assert stopped.stop_reason == "budget" and stopped.steps == 1
    assert (stopped.adapter_dir / "adapter_model.safetensors").is_file()
    assert io_utils.last_complete_checkpoint(tmp_path / "budget" / "checkpoints").name == "checkpoint-1"

    full = train(small_config(method="full", max_steps=2, learning_rate=1e-3), dataset, tmp_path / "full",
                 model=str(student_dir))
    reloaded = AutoModelForCausalLM.from_pretrained(full.model_dir)
    original = AutoModelForCausalLM.from_pretrained(student_dir)
    changed = [n for n, p in reloaded.named_parameters() if not torch.equal(p, original.get_parameter(n))]
    assert len(changed) == len(list(original.parameters()))
    for name, parameter in full.model.named_parameters():
        assert torch.equal(parameter.detach(), reloaded.get_parameter(name)), name


# ---------------------------------------------------------------------------------------------------
# QLoRA on CPU, and a 2-process accelerate run
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_qlora_trains_a_4bit_tiny_llama_on_cpu_and_merges(student_dir, tmp_path):
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "repeated.jsonl", [hotel_conversation(0)] * 4)
    config = TrainConfig(method="qlora", dtype="float32", lora_r=16, lora_alpha=32, lora_dropout=0.0, learning_rate=1e-2,
                         warmup_steps=0, batch_size=4, max_steps=12, save_every_steps=0, merge_adapter=True)
    result = train(config, data, tmp_path / "qlora", model=str(student_dir))
    base_layer = result.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(base_layer, bnb.nn.Linear4bit)  # really a 4-bit NF4 base
    losses = result.losses  # the same 4 conversations every step: the adapters must fit them
    assert losses[-1] < losses[0] - 0.8 and sum(losses[-3:]) < sum(losses[:3]) - 1.5

    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student_dir), result.adapter_dir).eval()
    ids = torch.tensor([[1, 5, 9, 40, 77, 120]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, unmerged(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_in_memory_student_pair_with_qlora_and_a_fresh_run_refuses_old_checkpoints(dataset, tmp_path):
    import bitsandbytes as bnb
    from peft import PeftModel

    tokenizer = build_tiny_tokenizer()
    base = build_tiny_llama(len(tokenizer), hidden=64)
    config = small_config(method="qlora", max_steps=2, save_every_steps=0, merge_adapter=True)
    result = train(config, dataset, tmp_path / "pair", model=(base, tokenizer))  # re-quantised via a scratch dir
    assert isinstance(result.model.base_model.model.model.layers[1].mlp.up_proj.base_layer, bnb.nn.Linear4bit)
    assert result.steps == 2 and result.tokenizer is tokenizer
    PeftModel.from_pretrained(build_tiny_llama(len(tokenizer), hidden=64), result.adapter_dir)
    assert (result.merged_dir / "model.safetensors").is_file()

    with pytest.raises(FileExistsError, match="resume"):
        train(config, dataset, tmp_path / "pair", model=(base, tokenizer))


def test_failed_4bit_loading_says_so_and_suggests_method_lora(student_dir, dataset, tmp_path, monkeypatch):
    import transformers

    from distill.training.model_setup import QuantizationUnavailableError

    def no_bitsandbytes(**_):
        raise ImportError("bitsandbytes is not installed")

    monkeypatch.setattr(transformers, "BitsAndBytesConfig", no_bitsandbytes)
    with pytest.raises(QuantizationUnavailableError, match=r"4-bit.*bitsandbytes is not installed.*--method lora"):
        train(small_config(method="qlora"), dataset, tmp_path / "out", model=str(student_dir))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_with_two_cpu_processes(student_dir, dataset, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config_path = tmp_path / "config.json"
    config_path.write_text(small_config(max_steps=4, save_every_steps=2, model_name_or_path=str(student_dir)).to_json())
    out = tmp_path / "ddp"
    # `--cpu` alone starts a single process (accelerate expects mpirun for CPU ranks); the torchrun-based
    # launcher on a machine without GPUs gives CPU processes on the gloo backend (see train()).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               "-m", "distill.training.trainer", "--config", str(config_path), "--data", str(dataset), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 4
    assert sorted(p.name for p in (out / "checkpoints" / "checkpoint-4").glob("rng_state_*.pth")) == [
        "rng_state_0.pth", "rng_state_1.pth"]  # one RNG state per process
    assert summary["global_batch"] == 2 * 2 * 2  # batch_size x grad_accum_steps x processes
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student_dir), out / "adapter")


def test_logits_only_at_loss_positions_give_the_same_loss_and_gradients():
    import distill.training.loss as trainer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(len(tokenizer), seed=5)
    conversations = [hotel_conversation(1, rounds=2), hotel_conversation(3, rounds=1)]
    data, _ = tokenize_dataset(tokenizer, [parse_example(c, f"mem:{i}") for i, c in enumerate(conversations)],
                               max_length=1024, with_soft_targets=True)
    batch = collate(data, tokenizer.pad_token_id)
    logits, positions = trainer.loss_logits(model, batch)
    assert positions is not None and 0 < logits.shape[1] == len(positions) < batch.input_ids.shape[1] // 2
    results = []
    for keep in (True, False):
        trainer._KEEPS_LOGITS[type(model)] = keep
        model.zero_grad()
        loss, _, _ = micro_batch_loss(model, batch, 10, batch.num_soft_targets, kl_weight=0.5)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    trainer._KEEPS_LOGITS.pop(type(model))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1]))
