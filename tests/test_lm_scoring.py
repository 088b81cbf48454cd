"""eval.lm.scorer on tiny local models: loading (and its errors), KV-reuse scoring against naive re-encoding and
against a direct reference, generation, and option parsing."""
import json
import shutil

import pytest
import torch

from eval.text.chat_format import tokenize_chat
from eval.lm import (
    ChoiceScorer,
    DialogueRequest,
    LMLoadError,
    RoundRequest,
    answer_sentence,
    load_causal_lm,
    parse_option_answer,
)
from tiny_lm import flight_dialogue_requests, option_answer, save_tiny_lm, save_tiny_lora_adapter


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py: tiny models, one thread


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_lms")
    return {
        "template": save_tiny_lm(root / "model-a"),
        "plain": save_tiny_lm(root / "model-plain", chat_template=False, pad_token=False, seed=1),
        "eager": save_tiny_lm(root / "model-eager", seed=2, attn_implementation="eager"),
        "other": save_tiny_lm(root / "model-b", hidden_size=48, seed=3),
        "wide": save_tiny_lm(root / "model-wide", hidden_size=64, seed=4),
    }


@pytest.fixture(scope="module")
def loaded(model_dirs):
    return {kind: load_causal_lm(model_dirs[kind]) for kind in ("template", "plain", "eager")}


def mixed_dialogues():
    """Dialogues of 1 to 4 rounds, with and without a system message, one with 2 candidates."""
    dialogues = flight_dialogue_requests(n_dialogues=4, n_rounds=4, n_options=3, n_words=30, seed=10)
    dialogues[1].rounds = dialogues[1].rounds[:2]
    dialogues[2].rounds = dialogues[2].rounds[:1]
    two_options = flight_dialogue_requests(n_dialogues=1, n_rounds=3, n_options=2, n_words=20, seed=20)
    return dialogues + two_options


def reference_logprobs(lm, dialogue: DialogueRequest) -> torch.Tensor:
    """The score definition, computed directly: one full forward per (round, candidate)."""
    rows = []
    for request in dialogue.rounds:
        row = []
        for candidate in request.candidates:
            ids, mask = tokenize_chat(lm.tokenizer, request.messages + [{"role": "assistant", "content": candidate}])
            start = len(mask) - mask[::-1].index(False)  # the candidate: the final run of assistant tokens
            with torch.no_grad():
                logprobs = torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            row.append(sum(logprobs[i - 1, ids[i]].item() for i in range(start, len(ids))))
        rows.append(row)
    return torch.tensor(rows)


@pytest.mark.parametrize("kind", ["template", "plain", "eager"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_kv_scoring_matches_naive(loaded, kind, batch_size):
    scorer = ChoiceScorer(loaded[kind], batch_size=batch_size)
    dialogues = mixed_dialogues()
    cached, naive = scorer.candidate_logprobs(dialogues), scorer.candidate_logprobs_naive(dialogues)
    assert [tuple(t.shape) for t in cached] == [(4, 3), (2, 3), (1, 3), (4, 3), (3, 2)]
    for kv, full in zip(cached, naive):
        assert torch.allclose(kv, full, atol=1e-4, rtol=0)
        assert kv.std() > 0.1  # the scores genuinely differ between candidates and rounds
    for kv, full in zip(scorer.score(dialogues), scorer.score_naive(dialogues)):
        assert torch.allclose(kv, full, atol=1e-4, rtol=0)
        assert torch.allclose(kv.sum(-1), torch.ones(kv.shape[0]), atol=1e-6)


@pytest.mark.parametrize("kind", ["template", "plain"])
def test_scores_follow_the_definition(loaded, kind):
    dialogue = flight_dialogue_requests(n_dialogues=1, n_rounds=3, n_words=25, seed=30)[0]
    expected = reference_logprobs(loaded[kind], dialogue)
    (cached,) = ChoiceScorer(loaded[kind]).candidate_logprobs([dialogue])
    assert torch.allclose(cached, expected, atol=1e-4, rtol=0)


def test_dialogue_that_does_not_extend_its_rounds_is_reencoded(loaded):
    lm = loaded["template"]
    a, b = flight_dialogue_requests(n_dialogues=2, n_rounds=2, n_words=20, seed=40)
    # Round 2 of `jumbled` continues another conversation than its round 1.
    jumbled = DialogueRequest(rounds=[a.rounds[0], b.rounds[1]])
    dialogues = [jumbled, a, b]
    for batch_size in (1, 3):
        scorer = ChoiceScorer(lm, batch_size=batch_size)
        for kv, full in zip(scorer.candidate_logprobs(dialogues), scorer.candidate_logprobs_naive(dialogues)):
            assert torch.allclose(kv, full, atol=1e-4, rtol=0)
    assert torch.allclose(ChoiceScorer(lm).candidate_logprobs([jumbled])[0], reference_logprobs(lm, jumbled), atol=1e-4)


def test_loaded_lm_records_template_and_pad(loaded):
    assert loaded["template"].uses_chat_template and loaded["template"].warnings == []
    plain = loaded["plain"]
    assert not plain.uses_chat_template
    assert any("no chat template" in w for w in plain.warnings)
    assert any("no pad token" in w for w in plain.warnings)
    assert plain.tokenizer.pad_token == plain.tokenizer.eos_token
    assert not plain.model.training


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(LMLoadError, match="does not exist") as raised:
        load_causal_lm(str(tmp_path / "no-such-model"))
    assert "\n" not in str(raised.value)


def test_adapter_loads_on_its_base_and_changes_scores(model_dirs, loaded, tmp_path):
    adapter = save_tiny_lora_adapter(model_dirs["template"], tmp_path / "adapter")
    with_adapter = load_causal_lm(model_dirs["template"], adapter=str(adapter))
    assert with_adapter.adapter == str(adapter)
    dialogue = flight_dialogue_requests(n_dialogues=1, n_rounds=2, n_words=20, seed=50)
    (tuned,) = ChoiceScorer(with_adapter).candidate_logprobs(dialogue)
    (base,) = ChoiceScorer(loaded["template"]).candidate_logprobs(dialogue)
    assert (tuned - base).abs().max() > 1e-3


def test_adapter_for_another_base_model_is_refused(model_dirs, tmp_path):
    adapter = save_tiny_lora_adapter(model_dirs["template"], tmp_path / "adapter-a")
    with pytest.raises(LMLoadError, match="was made for base model") as raised:
        load_causal_lm(model_dirs["other"], adapter=str(adapter))
    assert "\n" not in str(raised.value)
    # Even when the recorded base name matches, shapes that do not fit are refused.
    renamed = tmp_path / "adapter-renamed"
    shutil.copytree(adapter, renamed)
    config = json.loads((renamed / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(model_dirs["other"])
    (renamed / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(LMLoadError, match="does not fit"):
        load_causal_lm(model_dirs["other"], adapter=str(renamed))


def test_missing_adapter_is_a_clear_error(model_dirs, tmp_path):
    with pytest.raises(LMLoadError, match="adapter .* does not exist"):
        load_causal_lm(model_dirs["template"], adapter=str(tmp_path / "nowhere" / "adapter"))


def test_4bit_loading_and_scoring_on_cpu(model_dirs):
    lm = load_causal_lm(model_dirs["wide"], load_in_4bit=True)
    assert "4bit" in type(lm.model.model.layers[0].self_attn.q_proj).__name__
    dialogues = flight_dialogue_requests(n_dialogues=2, n_rounds=2, n_words=15, seed=60)
    scorer = ChoiceScorer(lm, batch_size=2)
    # bitsandbytes' CPU kernel rounds its outputs to bfloat16, so summation-order differences between the
    # cached and the full forward can flip a rounding: agreement is to bf16 precision, not 1e-4.
    for kv, full in zip(scorer.candidate_logprobs(dialogues), scorer.candidate_logprobs_naive(dialogues)):
        assert torch.allclose(kv, full, atol=5e-2, rtol=0)
        assert kv.std() > 0.1


def test_4bit_failure_says_to_drop_the_flag(model_dirs, monkeypatch):
    # bitsandbytes < 0.50 could not run layers narrower than its block size (64) on CPU, and this 32-wide
    # model failed on first use; 0.50.2 runs it.  A 4-bit kernel that fails when first used is still
    # possible (other devices, other versions): make the kernel fail, and loading must say so in one line.
    import bitsandbytes

    def unavailable(*args, **kwargs):
        raise RuntimeError("no 4-bit kernel for this layer on this device\nsecond line of detail")

    monkeypatch.setattr(bitsandbytes, "matmul_4bit", unavailable)
    with pytest.raises(LMLoadError, match="loaded in 4-bit NF4 but cannot run on cpu .*drop the 4-bit flag") as raised:
        load_causal_lm(model_dirs["wide"], load_in_4bit=True)  # wide: only the patched kernel fails (see below)
    assert "\n" not in str(raised.value) and "no 4-bit kernel" in str(raised.value)


def test_4bit_narrow_model_runs_close_to_full_precision_or_fails_in_one_line(model_dirs, loaded):
    # With bitsandbytes 0.50.2 on a CPU without AVX-512 BF16 the 32-wide model quantises and runs, and its
    # scores stay near the unquantised model's (4-bit weights: loose agreement only).  On a CPU with it,
    # bitsandbytes repacks each 4-bit weight for its bf16 kernel, which needs layers at least a block (64) wide:
    # the 32-wide model fails on first use ("shape '[32, 0]' is invalid"), and loading must say so in one line.
    from bitsandbytes.functional import has_avx512bf16

    if has_avx512bf16():
        with pytest.raises(LMLoadError, match="loaded in 4-bit NF4 but cannot run on cpu .*drop the 4-bit flag") as raised:
            load_causal_lm(model_dirs["template"], load_in_4bit=True)
        assert "\n" not in str(raised.value)
        return
    lm = load_causal_lm(model_dirs["template"], load_in_4bit=True)
    assert "4bit" in type(lm.model.model.layers[0].self_attn.q_proj).__name__
    dialogues = flight_dialogue_requests(n_dialogues=1, n_rounds=2, n_words=15, seed=60)
    (quantised,) = ChoiceScorer(lm).candidate_logprobs_naive(dialogues)
    (full,) = ChoiceScorer(loaded["template"]).candidate_logprobs_naive(dialogues)
    assert (quantised - full).abs().max() < 0.2 * full.abs().max()


def test_batched_greedy_generation_matches_one_by_one(loaded):
    scorer = ChoiceScorer(loaded["template"], batch_size=3)
    conversations = [r.messages for r in flight_dialogue_requests(n_dialogues=1, n_rounds=3, n_words=20, seed=70)[0].rounds]
    batched = scorer.generate(conversations, max_new_tokens=6)
    assert len(batched) == 3 and all(isinstance(text, str) for text in batched)
    assert batched == [scorer.generate([c], max_new_tokens=6)[0] for c in conversations]


def test_greedy_generation_picks_the_argmax_token(loaded):
    lm = loaded["template"]
    conversation = flight_dialogue_requests(n_dialogues=1, n_rounds=1, n_words=20, seed=80)[0].rounds[0].messages
    ids, mask = tokenize_chat(lm.tokenizer, conversation + [{"role": "assistant", "content": "x"}])
    prompt = ids[: mask.index(True)]
    with torch.no_grad():
        first = lm.model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax().item()
    text = ChoiceScorer(lm).generate([conversation], max_new_tokens=1)[0]
    assert text == lm.tokenizer.decode([first], skip_special_tokens=True).strip()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The best option is Flight 2.", 1),
        ("the BEST OPTION IS flight 3", 2),
        ("Flight 1", 0),
        ("I would go with option 2.", 1),
        ("Flight #3 looks good", 2),
        ("Flight 2 is cheaper, but the best option is Flight 1.", 0),
        ("The best option is Flight 4.", None),
        ("Flight 0", None),
        ("I cannot decide.", None),
        ("", None),
        ("Hotel 2", None),
        ("2", 1),  # the embedded student's answers: the option number alone
        ("\n3.", 2),
        ("1 Chosen: price: $100", 0),
        ("4", None),
        ("2.5 stars", None),
        ("10:00 PM", None),
        ("3/5", None),
    ],
)
def test_parse_option_answer(text, expected):
    assert parse_option_answer(text, "Flight", 3) == expected


def test_parse_option_answer_multiword_noun():
    assert parse_option_answer("The best option is Hotel Room 2.", "Hotel Room", 3) == 1
    assert parse_option_answer(option_answer("Hotel Room", 0), "Hotel Room", 3) == 0


@pytest.mark.parametrize(
    "reply,expected",
    [
        ("The best option is Flight 2.", 1),
        ("The best option is Flight 2. Flight 3 is cheaper, though.", 1),
        ("\n  Flight 3 suits you.\nRound 2.", 2),
        ("Round 2.\nFlight 1: departure time: 09:12 AM, duration: 4 hr", None),  # plays on instead of answering
        ("I am not sure. The best option is Flight 1.", None),  # the answer is not in the first sentence
        ("2.5 stars is fine", None),
        ("3", 2),
        ("", None),
    ],
)
def test_generate_mode_reads_the_first_sentence(reply, expected):
    assert parse_option_answer(answer_sentence(reply), "Flight", 3) == expected


def test_generate_mode_reply_that_continues_the_dialogue_is_a_failure(loaded):
    from eval.assistants import RecommendRequest
    from eval.lm.assistant import LMAssistant
    from ppl_models import get_domain, simulate_dialogues

    flight = get_domain("flight")
    dialogue = simulate_dialogues(flight, torch.tensor([3, 17]), 1, seed=4)
    request = RecommendRequest(flight, dialogue.option_index[:, :2], dialogue.choices[:, :2], dialogue.choices[:, :2],
                               dialogue.option_index[:, 2:4], seed=0, users=dialogue.users)
    replies = ["Round 2.\nFlight 1: departure time: 09:12 AM", "The best option is Flight 3.", "Flight 2", "Flight 1 or 2?"]
    assistant = LMAssistant(loaded["template"], mode="generate")
    assistant.scorer.generate = lambda conversations, **_: replies[: len(conversations)]
    recommendation = assistant.recommend(request)  # 2 users x 2 sets, in that order
    assert recommendation.picks.tolist() == [[-1, 2], [1, 0]]
    assert recommendation.failures.tolist() == [[True, False], [False, False]]
    assert assistant.unparseable_examples == [replies[0]]  # the raw text, kept for the report


def heldout_request(n_users=2, n_rounds=3, n_sets=4):
    from eval.assistants import RecommendRequest
    from ppl_models import get_domain, simulate_dialogues

    flight = get_domain("flight")
    dialogue = simulate_dialogues(flight, torch.tensor([3, 17, 40][:n_users]), 1, seed=4)
    sets = flight.draw_options(torch.Generator().manual_seed(1), (n_users, n_sets))
    return RecommendRequest(flight, dialogue.option_index[:, :n_rounds], dialogue.choices[:, :n_rounds].flip(1),
                            dialogue.choices[:, :n_rounds], sets, seed=0, users=dialogue.users)


@pytest.mark.parametrize("kind", ["template", "eager"])
@pytest.mark.parametrize("chunk_tokens", [768, 100])
def test_shared_prefix_recommendations_equal_the_per_prompt_path(loaded, kind, chunk_tokens):
    from eval.assistants import truncate_request
    from eval.text.dialogue import candidate_answers
    from eval.lm.assistant import LMAssistant

    request = heldout_request()
    assistant = LMAssistant(loaded[kind], mode="score")
    assistant.scorer.tree.chunk_tokens = chunk_tokens  # 100: several forwards per group, each cropped back
    shared = assistant.recommend_after_each_round(request)
    assert len(shared) == 4
    for k, recommendation in enumerate(shared):
        conversations = assistant.prompts(truncate_request(request, k))  # [D * M], each scored on its own
        candidates = candidate_answers(request.domain)
        naive = assistant.scorer.score_naive([DialogueRequest([RoundRequest(c, candidates)]) for c in conversations])
        expected = torch.stack([p[0] for p in naive]).reshape(2, 4, 3)
        assert torch.allclose(recommendation.probs, expected, atol=1e-4, rtol=0)
        assert torch.equal(recommendation.picks, assistant.recommend(truncate_request(request, k)).picks)
    assert (shared[3].probs - shared[0].probs).abs().max() > 1e-2


def test_shared_prefix_encodes_each_history_once(loaded):
    from eval.lm.assistant import LMAssistant
    from eval.lm.scoring import round_ids

    request = heldout_request(n_users=1, n_sets=5)
    assistant = LMAssistant(loaded["template"], mode="score")
    assistant.scorer.tree.chunk_tokens = 10_000  # one forward per round: the trie of all its prompts
    call = assistant.scorer.call
    call.forwarded_tokens = 0
    assistant.recommend_after_each_round(request)
    # Independently: the final history's tokens once (each round's history extends the one before), plus,
    # per round, every distinct token prefix of the (prompt tail + answer) sequences past the history.
    from eval.assistants import truncate_request
    from eval.text.dialogue import candidate_answers

    tokenizer, expected, history = loaded["template"].tokenizer, 0, 0
    for k in range(4):
        ids = [round_ids(tokenizer, RoundRequest(c, candidate_answers(request.domain)))
               for c in assistant.prompts(truncate_request(request, k))]
        common = min(next((i for i, (a, b) in enumerate(zip(ids[0].prompt, x.prompt)) if a != b), len(x.prompt))
                     for x in ids[1:])
        root = min(common, min(len(x.prompt) for x in ids) - 1)  # each prompt keeps >= 1 token of its own
        history = max(history, root)
        sequences = [x.prompt[root:] + c for x in ids for c in x.candidates]
        expected += len({tuple(s[:i]) for s in sequences for i in range(1, len(s) + 1)})
    assert call.forwarded_tokens == expected + history
    assert call.forwarded_tokens < 0.5 * sum(len(x.prompt) for x in ids) * 4  # far below one prompt at a time
