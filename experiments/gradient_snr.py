"""Why the oracle-taught student sits at ln 3: the training gradient's signal and noise per teacher, measured.

    python experiments/gradient_snr.py --model runs/hotel-oracle/train/model \
        --data bayesian=runs/hotel-bayesian/data/train-bayesian.jsonl --data oracle=runs/hotel-oracle/data/train-oracle.jsonl \
        [--batch-size 32] [--batches 48] [--out experiments/results/gradient_snr.json]

At the weights of ``--model`` (an embedded student saved by train/distill, e.g. one stuck on the ln 3 plateau),
for each teaching set, the trainer's loss (distill.training.loss.micro_batch_loss, the student's frozen option rows
kept frozen) is differentiated on K disjoint mini-batches of B whole dialogues (the student's longest
prefixes, the first K x B of the file).  With g_k the k-th mini-batch gradient over the trainable weights:

    signal^2 = ||E g||^2       estimated without bias as the mean of g_i . g_j over pairs i != j, with its
                               jackknife standard error (leaving out one batch at a time)
    noise^2  = tr Var(g)       the per-coordinate sample variance of g_k, summed
    snr      = signal^2 / noise^2

per part of the target: every answer, round 1's answers only, and the later rounds' answers only (answer r is
the r-th run of target tokens in a row, distill.training.chat_dataset.answer_spans).  Noise^2 falls as 1/B, so a teacher
whose snr is c times smaller needs about c times the batch (or, with Adam near a saddle, about c times the examples) to get the same push out of
it.  Give teaching sets of the same dialogues (make-data with the same seed: only the assistant turns differ)
so that the teachers differ in their answers only.  Not a timing; both teachers are measured in the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path


import torch  # noqa: E402

from distill.training.chat_dataset import answer_spans, collate, parse_example, tokenize_dataset  # noqa: E402
from distill.training.loss import micro_batch_loss  # noqa: E402
from distill.student.model import freeze_option_embeddings, longest_prefixes  # noqa: E402
from eval.student_card import read_student_card  # noqa: E402

PARTS = ("all", "round 1", "rounds 2+")


def part_mask(target_mask: torch.Tensor, part: str) -> torch.Tensor:
    """``target_mask`` [rows, T] restricted to round 1's answers, the later rounds' answers, or all."""
    if part == "all":
        return target_mask
    first = torch.zeros_like(target_mask)
    for row in range(target_mask.shape[0]):
        spans = answer_spans(target_mask[row].tolist())  # (start, length) per answer
        if spans:
            start, length = spans[0]
            first[row, start:start + length] = True
    return first if part == "round 1" else target_mask & ~first


def batch_gradients(model, batches, part: str) -> torch.Tensor:
    """[K, P] float64: the gradient of the trainer's step-mean loss on each batch over the trainable weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for batch in batches:
        batch = dataclasses.replace(batch, target_mask=part_mask(batch.target_mask, part))
        targets = max(1, int(batch.target_mask[:, 1:].sum()))
        loss, _, _ = micro_batch_loss(model, batch, targets, 1, 0.0)
        model.zero_grad(set_to_none=True)
        loss.backward()
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]).double())
    return torch.stack(grads)


def signal_and_noise(grads: torch.Tensor) -> dict:
    """From K independent samples g_k (rows of ``grads``): the unbiased ||E g||^2 (the mean of g_i . g_j over
    pairs i != j), its jackknife standard error, tr Var(g) (unbiased) and their ratio.  All from the K x K Gram
    matrix, so the error costs nothing: with a few dozen batches the signal of a plateau is often within two
    standard errors of zero, and only an estimate clear of its error says anything."""
    k = grads.shape[0]
    gram = grads @ grads.T  # [K, K]
    total, trace = float(gram.sum()), float(gram.trace())
    signal_sq = (total - trace) / (k * (k - 1))
    noise_sq = (trace - total / k) / (k - 1)
    # leave batch i out: the pairs among the other K - 1
    rows, diagonal = gram.sum(1), gram.diagonal()
    left_out = ((total - trace) - 2 * (rows - diagonal)) / ((k - 1) * (k - 2))  # [K]
    error = float(((k - 1) / k * (left_out - left_out.mean()).pow(2).sum()).sqrt())
    return {"signal_sq": signal_sq, "signal_sq_se": error, "noise_sq": noise_sq,
            "snr": signal_sq / noise_sq if noise_sq else float("inf")}


def measure(model_dir: Path, data: dict[str, Path], batch_size: int, n_batches: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ppl_models import get_domain

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    domain = get_domain(read_student_card(model_dir)["domain"])
    results = {}
    for teacher, path in data.items():
        with open(path, encoding="utf-8") as file:
            lines = [line for _, line in zip(range(batch_size * n_batches * 10), file) if line.strip()]
        lines = longest_prefixes(lines)[: batch_size * n_batches]
        if len(lines) < batch_size * n_batches:
            raise SystemExit(f"{path}: {len(lines)} dialogues, fewer than --batch-size x --batches")
        examples = [parse_example(json.loads(line), f"{path}:{i}") for i, line in enumerate(lines)]
        tokenized, _ = tokenize_dataset(tokenizer, examples, 512, with_soft_targets=False)
        batches = [collate(tokenized[k * batch_size:(k + 1) * batch_size], tokenizer.pad_token_id) for k in range(n_batches)]
        model = AutoModelForCausalLM.from_pretrained(model_dir).train()
        freeze_option_embeddings(model, tokenizer, domain)
        results[teacher] = {}
        for part in PARTS:
            grads = batch_gradients(model, batches, part)
            results[teacher][part] = signal_and_noise(grads)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="An embedded student's model directory.")
    parser.add_argument("--data", action="append", required=True, help="TEACHER=PATH of a teaching set (repeat).")
    parser.add_argument("--batch-size", type=int, default=32, help="Dialogues per mini-batch (the student's 32).")
    parser.add_argument("--batches", type=int, default=48, help="Mini-batches per teacher and part.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gradient_snr.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = dict(item.split("=", 1) for item in args.data)
    start = time.perf_counter()
    results = measure(args.model, {k: Path(v) for k, v in data.items()}, args.batch_size, args.batches)
    out = {"benchmark": "gradient_snr", "model": str(args.model), "batch_size": args.batch_size,
           "batches": args.batches, "data": data, "teachers": results, "wall_s": round(time.perf_counter() - start, 1),
           "command": "python experiments/gradient_snr.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'teacher':10s} {'part':10s} {'signal^2':>10s} {'+- se':>9s} {'noise^2':>9s} {'snr':>10s}")
    for teacher, parts in results.items():
        for part, row in parts.items():
            print(f"{teacher:10s} {part:10s} {row['signal_sq']:10.2e} {row['signal_sq_se']:9.1e} {row['noise_sq']:9.3f} "
                  f"{row['snr']:10.2e}")
    return out


if __name__ == "__main__":
    main()
