"""Tokenising dialogues for the embedded student: eval.text.chat_format as it is against its earlier way, same run.

    python benchmarks/bench_tokenize.py [--dialogues 300] [--users 3] [--heldout 20] [--repeats 3] [--out results/tokenize.json]

Two workloads, both through the embedded student's hotel tokenizer and chat template:

* ``teaching``: ``tokenize_chat`` of ``--dialogues`` whole 6-round teaching dialogues (what train_student does
  before its first step; every conversation distinct).
* ``evaluation``: ``lm_scoring.round_ids`` of every held-out request the protocol makes for ``--users`` users
  (``--heldout`` option sets after each of rounds 0-5, 3 candidate answers each: what evaluating a student
  tokenises; the sets of a round share the rounds before them).

The baseline is the earlier code path, rebuilt here: every prefix rendered afresh through transformers'
sandboxed ``apply_chat_template`` and every segment encoded in its own tokenizer call.  Both paths must give
the same ids (checked on every conversation).  Reported: median seconds of ``--repeats`` runs each, per
conversation, and the ratio baseline / current; caches are emptied before each current run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


import torch  # noqa: E402

import eval.text.chat_format as chat_format  # noqa: E402
from distill.student.model import StudentConfig, student_tokenizer  # noqa: E402
from eval.text.dialogue import candidate_answers, dialogue_messages, heldout_prompt_messages  # noqa: E402
from ppl_models import get_domain  # noqa: E402
from ppl_models.rng import generator  # noqa: E402


def baseline_tokenize_chat(tokenizer, messages) -> list[int]:
    """The earlier path: each prefix rendered in the sandbox, each segment encoded on its own."""
    render = lambda n, prompt: tokenizer.apply_chat_template(messages[:n], tokenize=False, add_generation_prompt=prompt)  # noqa: E731
    texts, done = [], ""
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            with_prompt = render(index, True)
            if texts:
                texts[-1] += with_prompt[len(done):]
            else:
                texts.append(with_prompt)
            done = with_prompt
        rendered = render(index + 1, False)
        texts.append(rendered[len(done):])
        done = rendered
    return [t for text in texts if text for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


def workloads(domain, n_dialogues: int, n_users: int, n_heldout: int) -> dict[str, list[list[dict]]]:
    rng = generator(0, "bench-tokenize")
    rounds = domain.n_rounds + 1
    teaching = []
    for _ in range(n_dialogues):
        options = domain.draw_options(rng, (rounds,))
        picks = torch.randint(domain.n_options, (rounds,), generator=rng).tolist()
        choices = torch.randint(domain.n_options, (rounds,), generator=rng).tolist()
        teaching.append(dialogue_messages(domain, options, picks, choices))
    answers = candidate_answers(domain)
    evaluation = []
    for _ in range(n_users):
        options = domain.draw_options(rng, (domain.n_rounds,))
        picks = torch.randint(domain.n_options, (domain.n_rounds,), generator=rng).tolist()
        choices = torch.randint(domain.n_options, (domain.n_rounds,), generator=rng).tolist()
        for seen in range(domain.n_rounds + 1):
            for heldout in domain.draw_options(rng, (n_heldout,)):
                prompt = heldout_prompt_messages(domain, options[:seen], picks[:seen], choices[:seen], heldout)
                evaluation.extend(prompt + [{"role": "assistant", "content": a}] for a in answers)
    return {"teaching": teaching, "evaluation": evaluation}


def timed(function, conversations, repeats: int, before=lambda: None) -> tuple[float, list]:
    times, result = [], None
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        result = [function(c) for c in conversations]
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=300, help="Teaching dialogues (6 rounds each).")
    parser.add_argument("--users", type=int, default=3, help="Evaluation users (6 x --heldout x 3 requests each).")
    parser.add_argument("--heldout", type=int, default=20, help="Held-out option sets per user and round.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tokenize.json")
    args = parser.parse_args(argv)
    domain = get_domain("hotel")
    tokenizer = student_tokenizer(domain, StudentConfig())

    def empty_caches():
        chat_format._render_prefix.cache_clear()
        tokenizer.__dict__.pop("_bayes_teach_segment_ids", None)

    results = {"benchmark": "tokenize", "command": "python benchmarks/bench_tokenize.py " + " ".join(argv or sys.argv[1:]),
               "settings": vars(args) | {"out": str(args.out)}, "workloads": {}}
    for name, conversations in workloads(domain, args.dialogues, args.users, args.heldout).items():
        current_s, current = timed(lambda m: chat_format.tokenize_chat(tokenizer, m)[0], conversations, args.repeats,
                                   empty_caches)
        baseline_s, baseline = timed(lambda m: baseline_tokenize_chat(tokenizer, m), conversations, args.repeats)
        if current != baseline:
            raise SystemExit(f"{name}: the two paths give different ids")
        results["workloads"][name] = {
            "conversations": len(conversations), "baseline_s": round(baseline_s, 3), "current_s": round(current_s, 3),
            "baseline_ms_per_conversation": round(1000 * baseline_s / len(conversations), 3),
            "current_ms_per_conversation": round(1000 * current_s / len(conversations), 3),
            "speedup": round(baseline_s / current_s, 2), "same_ids": True}
        print(f"{name:10s} {len(conversations):6d} conversations: baseline {baseline_s:.2f} s, now {current_s:.2f} s "
              f"({baseline_s / current_s:.1f}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
