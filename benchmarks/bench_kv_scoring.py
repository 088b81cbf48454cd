"""Benchmark: KV-reuse candidate scoring against naive per-option full re-encoding, on CPU.

One tiny LlamaForCausalLM with random weights (no download), dialogues of 5 rounds x 3 options with about
80 words per user turn.  Both methods score the same dialogues in the same run, alternating, ``--repeats``
times each; the median wall time of each is compared, and the largest difference between their
probabilities is recorded.  Writes benchmarks/results/kv_scoring.json and prints its path.

    .venv/bin/python benchmarks/bench_kv_scoring.py
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = REPO_ROOT / "tests"  # the tests' tiny models (tests/ is not a package: loaded by path)

import torch  # noqa: E402
import transformers  # noqa: E402

from eval.lm import ChoiceScorer, load_causal_lm  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "kv_scoring.json"


def tests_helper(name: str):
    """A module of tests/ (the tiny models), loaded by path: tests/ is not an installed package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flight_dialogue_requests = tests_helper("tiny_lm").flight_dialogue_requests
save_tiny_lm = tests_helper("tiny_lm").save_tiny_lm
TARGET_SPEEDUP = 3.0


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--options", type=int, default=3)
    parser.add_argument("--words", type=int, default=80, help="words per user turn")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8, help="dialogues per KV batch")
    parser.add_argument("--naive-batch-rows", type=int, default=16, help="sequences per naive forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args()


def timed(function, dialogues):
    """(wall seconds, CPU seconds of this process, result): CPU time is the steadier measure when other
    processes share the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(dialogues)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as directory:
        model_dir = save_tiny_lm(Path(directory) / "bench-llama", hidden_size=args.hidden, n_layers=args.layers,
                                 n_heads=max(1, args.hidden // 32), initializer_range=0.02)
        lm = load_causal_lm(model_dir)
    dialogues = flight_dialogue_requests(args.dialogues, args.rounds, args.options, args.words, seed=0)
    scorer = ChoiceScorer(lm, batch_size=args.batch_size, naive_batch_rows=args.naive_batch_rows)

    scorer.score(dialogues[:2]), scorer.score_naive(dialogues[:2])  # warm-up
    kv_times, naive_times, kv_cpu, naive_cpu = [], [], [], []
    for _ in range(args.repeats):
        wall, cpu, kv_probs = timed(scorer.score, dialogues)
        kv_times.append(wall)
        kv_cpu.append(cpu)
        wall, cpu, naive_probs = timed(scorer.score_naive, dialogues)
        naive_times.append(wall)
        naive_cpu.append(cpu)
    max_abs_diff = max((kv - naive).abs().max().item() for kv, naive in zip(kv_probs, naive_probs))

    prompt_tokens = [len(lm.tokenizer(r.messages[-1]["content"])["input_ids"]) for d in dialogues for r in d.rounds]
    kv_seconds, naive_seconds = statistics.median(kv_times), statistics.median(naive_times)
    result = {
        "benchmark": "kv_scoring",
        "model": {"type": "LlamaForCausalLM (random weights)", "hidden_size": args.hidden, "layers": args.layers,
                  "parameters": sum(p.numel() for p in lm.model.parameters()), "vocab_size": len(lm.tokenizer)},
        "workload": {"dialogues": args.dialogues, "rounds": args.rounds, "options": args.options,
                     "words_per_user_turn": args.words, "mean_tokens_per_user_turn": statistics.mean(prompt_tokens),
                     "kv_batch_size": args.batch_size, "naive_batch_rows": args.naive_batch_rows},
        "kv_seconds": kv_times,
        "naive_seconds": naive_times,
        "kv_median_seconds": kv_seconds,
        "naive_median_seconds": naive_seconds,
        "speedup": naive_seconds / kv_seconds,
        "kv_cpu_seconds": kv_cpu,
        "naive_cpu_seconds": naive_cpu,
        "speedup_cpu_time": statistics.median(naive_cpu) / statistics.median(kv_cpu),
        "target_speedup": TARGET_SPEEDUP,
        "max_abs_prob_diff": max_abs_diff,
        "environment": {"torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
                        "device": "cpu", "python": platform.python_version(), "machine": platform.machine()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"KV reuse {kv_seconds:.2f} s, naive {naive_seconds:.2f} s (median wall): {result['speedup']:.1f}x, "
          f"{result['speedup_cpu_time']:.1f}x in CPU time (target {TARGET_SPEEDUP}x); "
          f"max |prob difference| {max_abs_diff:.2e}")
    print(args.output)
    assert max_abs_diff < 1e-4, f"KV-reuse and naive probabilities differ by {max_abs_diff}"


if __name__ == "__main__":
    main()
