"""experiments/gradient_snr.py: mini-batch gradients, their signal and noise, checked against one backward pass
over the union of the batches and against batches that are all the same."""
import json
from pathlib import Path

import pytest
import torch

from distill.training.chat_dataset import collate, parse_example, tokenize_dataset
from distill.training.loss import micro_batch_loss
from distill.student.model import StudentConfig, build_student
from eval.text.dialogue import dialogue_messages
from eval.student_card import save_student_card
from ppl_models import get_domain
from ppl_models.rng import generator
from script_loader import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "gradient_snr.py"
TINY = StudentConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def student():
    domain = get_domain("hotel")
    model, tokenizer = build_student(domain, TINY)
    conversations = []
    for seed in range(8):
        options = domain.draw_options(generator(seed, "test-gradient-snr"), (domain.n_rounds,))
        picks = [(seed + r) % 3 for r in range(domain.n_rounds)]
        choices = [(seed * r + 1) % 3 for r in range(domain.n_rounds)]
        conversations.append({"messages": dialogue_messages(domain, options, picks, choices)})
    examples = [parse_example(c, f"conversation {i}") for i, c in enumerate(conversations)]
    tokenized, _ = tokenize_dataset(tokenizer, examples, 512, with_soft_targets=False)
    return domain, model.train(), tokenizer, conversations, tokenized


def test_answer_runs_and_part_masks(script):
    from distill.training.chat_dataset import answer_spans

    mask = torch.tensor([[0, 1, 1, 0, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert answer_spans(mask[0].tolist()) == [(1, 2), (5, 1), (7, 1)]  # positions [1, 2], [5], [7]
    assert answer_spans(mask[1].tolist()) == [(0, 1), (6, 2)]  # positions [0], [6, 7]
    first = script.part_mask(mask, "round 1")
    later = script.part_mask(mask, "rounds 2+")
    assert first.tolist() == [[0, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]]
    assert (first | later).equal(mask) and not (first & later).any()


def test_mean_batch_gradient_is_the_gradient_over_all_batches(script, student):
    _, model, tokenizer, _, tokenized = student
    batches = [collate(tokenized[k * 2:(k + 1) * 2], tokenizer.pad_token_id) for k in range(4)]
    grads = script.batch_gradients(model, batches, "all")
    assert grads.shape[0] == 4 and grads.abs().sum() > 0
    # independently: one backward pass over all 8 conversations (every one has the same number of answers)
    union = collate(tokenized, tokenizer.pad_token_id)
    loss, _, _ = micro_batch_loss(model, union, int(union.target_mask[:, 1:].sum()), 1, 0.0)
    model.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    expected = torch.cat([p.grad.flatten() for p in params]).double()
    torch.testing.assert_close(grads.mean(0), expected, rtol=1e-4, atol=1e-7)
    # round 1's answers and the later rounds' answers: each its own mean over its own targets
    first = script.batch_gradients(model, batches, "round 1")
    later = script.batch_gradients(model, batches, "rounds 2+")
    rounds = get_domain("hotel").n_rounds
    torch.testing.assert_close((first + (rounds - 1) * later) / rounds, grads, rtol=1e-4, atol=1e-7)


def test_identical_batches_have_no_noise(script, student):
    _, model, tokenizer, _, tokenized = student
    batches = [collate(tokenized[:2], tokenizer.pad_token_id)] * 3
    grads = script.batch_gradients(model, batches, "all")
    result = script.signal_and_noise(grads)
    assert result["noise_sq"] == pytest.approx(0, abs=1e-12)
    assert result["signal_sq"] == pytest.approx(float(grads[0].pow(2).sum()), rel=1e-9)

    # against the per-coordinate formulas and a direct leave-one-out
    samples = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.3
    result = script.signal_and_noise(samples)
    variance = samples.var(dim=0)
    assert result["noise_sq"] == pytest.approx(float(variance.sum()), rel=1e-12)
    assert result["signal_sq"] == pytest.approx(float(samples.mean(0).pow(2).sum() - variance.sum() / 7), rel=1e-12)
    left_out = torch.tensor([float(samples[[j for j in range(7) if j != i]].mean(0).pow(2).sum()
                                   - samples[[j for j in range(7) if j != i]].var(dim=0).sum() / 6) for i in range(7)],
                            dtype=torch.float64)
    jackknife = float((6 / 7 * (left_out - left_out.mean()).pow(2).sum()).sqrt())
    assert result["signal_sq_se"] == pytest.approx(jackknife, rel=1e-9)


def test_the_script_writes_one_row_per_teacher_and_part(script, student, tmp_path):
    domain, model, tokenizer, conversations, _ = student
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    save_student_card(domain, tmp_path / "model")
    data = tmp_path / "teach.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    out = script.main(["--model", str(tmp_path / "model"), "--data", f"a={data}", "--data", f"b={data}",
                       "--batch-size", "2", "--batches", "3", "--out", str(tmp_path / "snr.json")])
    assert json.loads((tmp_path / "snr.json").read_text()) == out
    assert set(out["teachers"]) == {"a", "b"} and set(out["teachers"]["a"]) == {"all", "round 1", "rounds 2+"}
    assert out["teachers"]["a"] == out["teachers"]["b"]  # the same data, the same numbers
    with pytest.raises(SystemExit, match="fewer than"):
        script.main(["--model", str(tmp_path / "model"), "--data", f"a={data}", "--batch-size", "4", "--batches", "3",
                     "--out", str(tmp_path / "x.json")])
