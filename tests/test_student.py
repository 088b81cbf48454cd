"""The embedded default student (distill/student/model.py): its domain tokenizer, chat template and training."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from distill.student.model import StudentConfig, build_student, build_tokenizer, longest_prefixes, train_student, value_texts
from eval.text.chat_format import chat_segments, tokenize_chat
from eval.text.dialogue import candidate_answers, dialogue_messages, heldout_prompt_messages
from ppl_models import get_domain
from ppl_models.domains.flight import flight_domain
from ppl_models.rng import generator

TINY = StudentConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, batch_size=4,
                     learning_rate=1e-2, warmup_steps=2)


def _dialogue(domain, seed=0):
    options = domain.draw_options(generator(seed, "test-student"), (domain.n_rounds,))
    picks = [r % domain.n_options for r in range(domain.n_rounds)]
    choices = [(r + 1) % domain.n_options for r in range(domain.n_rounds)]
    return options, picks, choices


@pytest.mark.parametrize("domain", [get_domain("hotel"), get_domain("flight"), flight_domain(8)], ids=lambda d: d.name)
def test_every_value_text_is_one_known_token(domain):
    tokenizer = build_tokenizer(domain)
    for texts in value_texts(domain):
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, text


@pytest.mark.parametrize("option_tokens", [False, True], ids=["value-tokens", "option-tokens"])
@pytest.mark.parametrize("domain", [get_domain("hotel"), get_domain("flight"), flight_domain(8)], ids=lambda d: d.name)
def test_dialogues_and_heldout_prompts_have_no_unknown_tokens(domain, option_tokens):
    tokenizer = build_tokenizer(domain, option_tokens=option_tokens)
    options, picks, choices = _dialogue(domain)
    # every value of every feature appears in some option row
    rows = torch.stack([torch.tensor([i % len(f.values) for f in domain.features]) for i in range(11)])
    options = options.clone()
    options[0] = rows[:domain.n_options]
    options[1] = rows[domain.n_options: 2 * domain.n_options]
    options[2] = rows[2 * domain.n_options: 3 * domain.n_options]
    options[3] = rows[[9, 10, 0]]
    picks[2] = -1  # the "I am not sure" answer and its feedback
    conversations = [dialogue_messages(domain, options, picks, choices)]
    conversations.append(heldout_prompt_messages(domain, options[:3], picks[:3], choices[:3], options[4]))
    for messages in conversations:
        ids, _ = tokenize_chat(tokenizer, messages)
        assert tokenizer.unk_token_id not in ids
    for answer in candidate_answers(domain):
        assert tokenizer.unk_token_id not in tokenizer(answer, add_special_tokens=False)["input_ids"]


def test_chat_template_is_append_only_and_masks_answers():
    domain = get_domain("hotel")
    model, tokenizer = build_student(domain, TINY)
    options, picks, choices = _dialogue(domain)
    messages = dialogue_messages(domain, options, picks, choices)
    segments = chat_segments(tokenizer, messages)  # raises ChatTemplateError if not append-only
    assert len(segments) == len(messages)
    full, mask = tokenize_chat(tokenizer, messages)
    for n in range(1, len(messages)):
        assert full[: len(tokenize_chat(tokenizer, messages[:n])[0])] == tokenize_chat(tokenizer, messages[:n])[0]
    tokens = tokenizer.convert_ids_to_tokens(full)
    answers = [t for t, m in zip(tokens, mask) if m]
    # answer_after_options: "The best option is Hotel 2." reads "2", right after the last option line
    assert answers == [str(picks[r] + 1) for r in range(domain.n_rounds)]
    first_answer = mask.index(True)
    assert tokens[first_answer - 1] == f"Hotel 3: {domain.option_text(options[0, 2].tolist())}"
    assert model.config.vocab_size == len(tokenizer)
    assert len(full) < 300  # compact: a 5-round hotel dialogue


def test_longest_prefixes_keeps_one_example_per_dialogue(tmp_path):
    from distill.teaching_data import write_teaching_set

    domain = get_domain("hotel")
    write_teaching_set(domain, "bayesian", tmp_path, n_dialogues=2, n_eval_users=10, max_train_users=3)
    lines = (tmp_path / "train-bayesian.jsonl").read_text().splitlines()
    kept = longest_prefixes(lines)
    assert len(lines) == 5 * len(kept) == 5 * 6
    assert all(line.count('"role": "assistant"') == domain.n_rounds for line in kept)


def test_a_few_training_steps_lower_the_loss(tmp_path):
    from distill.teaching_data import write_teaching_set

    domain = get_domain("hotel")
    write_teaching_set(domain, "bayesian", tmp_path / "data", n_dialogues=2, n_eval_users=10, max_train_users=4)
    result = train_student(domain, tmp_path / "data" / "train-bayesian.jsonl", tmp_path / "run", budget_minutes=2,
                           config=TINY, max_steps=20)
    assert result.steps == 20 and result.stop_reason == "max_steps"
    assert sum(result.losses[-3:]) / 3 < 0.7 * sum(result.losses[:3]) / 3
    # the saved tokenizer, loaded as evaluate loads it, reads a dialogue as the student's own tokenizer does
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    _, fresh = build_student(domain, TINY)
    messages = dialogue_messages(domain, *_dialogue(domain))
    assert tokenize_chat(saved, messages)[0] == tokenize_chat(fresh, messages)[0]


@pytest.mark.parametrize("domain", [get_domain("hotel"), get_domain("flight")], ids=lambda d: d.name)
def test_each_option_line_is_one_token_starting_from_its_header_and_values(domain):
    model, tokenizer = build_student(domain, TINY)
    options, picks, choices = _dialogue(domain)
    ids, _ = tokenize_chat(tokenizer, dialogue_messages(domain, options, picks, choices))
    tokens = tokenizer.convert_ids_to_tokens(ids)
    noun = domain.noun[:1].upper() + domain.noun[1:]
    expected = [f"{noun} {k + 1}: {domain.option_text(row)}" for r in range(domain.n_rounds)
                for k, row in enumerate(options[r].tolist())]
    assert [t for t in tokens if t.startswith(f"{noun} ") and ", " in t] == expected
    # Two lines that differ only in one value start closer than two lines that differ in every value.
    embed = model.get_input_embeddings().weight
    base = [0] * len(domain.features)
    near = [1] + [0] * (len(domain.features) - 1)
    far = [len(f.values) - 1 for f in domain.features]
    line = lambda idx: embed[tokenizer.convert_tokens_to_ids(f"{noun} 1: {domain.option_text(idx)}")]
    assert torch.dist(line(base), line(near)) < torch.dist(line(base), line(far))


def test_domains_with_too_many_option_lines_keep_value_tokens():
    domain = flight_domain(8)  # 11,068,596 value combinations
    tokenizer = build_tokenizer(domain, option_tokens=True)
    options, picks, choices = _dialogue(domain)
    ids, _ = tokenize_chat(tokenizer, dialogue_messages(domain, options, picks, choices))
    assert len(tokenizer) < 1000 and tokenizer.unk_token_id not in ids


@pytest.mark.parametrize("answer_after_options, restate_rejected", [(False, False), (True, False), (True, True)])
def test_the_template_restates_each_chosen_option_and_stays_append_only(answer_after_options, restate_rejected):
    domain = get_domain("hotel")
    tokenizer = build_tokenizer(domain, option_tokens=True, restate_choices=True,
                                answer_after_options=answer_after_options, restate_rejected=restate_rejected)
    options, picks, choices = _dialogue(domain, seed=3)
    messages = dialogue_messages(domain, options, picks, choices)
    chat_segments(tokenizer, messages)  # raises ChatTemplateError unless append-only
    tokens = tokenizer.convert_ids_to_tokens(tokenize_chat(tokenizer, messages)[0])
    restated = [t for t in tokens if t.startswith("Chosen: ")]
    # one per feedback turn (rounds 1..4 are followed by a user turn), naming the user's choice of that round
    assert restated == [f"Chosen: {domain.option_text(options[r, choices[r]].tolist())}" for r in range(domain.n_rounds - 1)]
    # with restate_rejected, each restated choice is followed by the round's other options, in option order
    expected = []
    for r in range(domain.n_rounds - 1):
        expected.append(restated[r])
        if restate_rejected:
            expected += [f"Rejected: {domain.option_text(options[r, k].tolist())}"
                         for k in range(domain.n_options) if k != choices[r]]
    assert [t for t in tokens if t.startswith(("Chosen: ", "Rejected: "))] == expected
    assert tokenizer.unk_token_id not in tokenizer.convert_tokens_to_ids(tokens)
    prompt = heldout_prompt_messages(domain, options[:2], picks[:2], choices[:2], options[4])
    prompt_tokens = tokenizer.convert_ids_to_tokens(tokenize_chat(tokenizer, prompt)[0])
    assert [t for t in prompt_tokens if t.startswith("Chosen: ")] == restated[:2]


@pytest.mark.parametrize("answer_after_options", [False, True])
def test_without_option_tokens_the_template_keeps_every_message_text(answer_after_options):
    """The template drops only the closing question and the answer's fixed opening and period; with the plain
    template every message's text is there in full.  Checked per message, on its own segment."""
    domain = get_domain("hotel")
    tokenizer = build_tokenizer(domain, option_tokens=False, answer_after_options=answer_after_options)
    options, picks, choices = _dialogue(domain, seed=5)
    messages = dialogue_messages(domain, options, picks, choices)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    question = f"Which {domain.noun} is best for me?"
    assert (question in text) != answer_after_options
    # the task explanation quotes the answer format once; the answers themselves drop their opening
    assert text.count("The best option is Hotel") == 1 + (0 if answer_after_options else domain.n_rounds)
    segments = chat_segments(tokenizer, messages)
    assert "".join(segment.text for segment in segments) == text
    answers = iter(picks)
    for message, segment in zip(messages, segments):
        if message["role"] == "assistant" and answer_after_options:
            assert segment.text == f"\n{next(answers) + 1}"  # the option number alone
        elif answer_after_options:
            assert segment.text == "<|user|>" + message["content"].replace("\n" + question, "")
        else:
            assert message["content"] in segment.text


@pytest.mark.parametrize("restate_rejected", [False, True])
def test_option_line_embeddings_stay_fixed_while_the_rest_trains(restate_rejected):
    from distill.student.model import REJECTED_PREFIX, chosen_descriptions, option_descriptions

    domain = get_domain("hotel")
    # restated choices and frozen option rows by default
    model, tokenizer = build_student(domain, dataclasses.replace(TINY, restate_rejected=restate_rejected))
    options, picks, choices = _dialogue(domain)
    ids = torch.tensor([tokenize_chat(tokenizer, dialogue_messages(domain, options, picks, choices))[0]])
    before = model.get_input_embeddings().weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # no weight decay: frozen rows must not move at all
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    after = model.get_input_embeddings().weight.detach()
    frozen = torch.tensor(tokenizer.convert_tokens_to_ids(
        [t for t, _, _ in option_descriptions(domain)] + [t for t, _ in chosen_descriptions(domain)]
        + [t for t, _ in chosen_descriptions(domain, prefix=REJECTED_PREFIX)]))
    frozen = frozen[frozen != tokenizer.unk_token_id]
    used = ids[0].unique()
    used_frozen, used_others = used[torch.isin(used, frozen)], used[~torch.isin(used, frozen)]
    # option lines and restated choices (and the rejected options)
    assert len(used_frozen) >= 3 * domain.n_rounds + (domain.n_rounds - 1) * 2 * restate_rejected
    assert torch.equal(after[used_frozen], before[used_frozen])
    assert (after[used_others] - before[used_others]).abs().amax(1).gt(0).all()


def test_without_round_markers_a_sixth_round_reads_like_the_others():
    domain = get_domain("hotel")
    tokenizer = build_tokenizer(domain, option_tokens=True, restate_choices=True, answer_after_options=True,
                                round_markers=False)
    options, picks, choices = _dialogue(domain, seed=4)
    messages = dialogue_messages(domain, options, picks, choices)
    chat_segments(tokenizer, messages)  # append-only
    tokens = tokenizer.convert_ids_to_tokens(tokenize_chat(tokenizer, messages)[0])
    assert not [t for t in tokens if t.startswith("Round")]
    # the held-out question after 5 rounds: its prompt ends like every round's, with the three option lines
    prompt = heldout_prompt_messages(domain, options, picks, choices, options[0])
    prompt_tokens = tokenizer.convert_ids_to_tokens(tokenize_chat(tokenizer, prompt)[0])
    assert not [t for t in prompt_tokens if t.startswith("Round")]
    assert prompt_tokens[-3:] == [f"Hotel {k + 1}: {domain.option_text(options[0, k].tolist())}" for k in range(3)]
    assert prompt_tokens[:len(tokens)] == tokens


def test_a_saved_student_template_is_adopted_only_when_this_process_rebuilds_it_exactly(tmp_path):
    """A student tokenizer read from disk renders without the sandbox (and from the segmented twin) only when its
    template is exactly what the card's options build for the domain; the segments are the sandbox's cuts."""
    from transformers import AutoTokenizer

    from distill.student.tokenizer import adopt_saved_template
    from eval.text.chat_format import OWN_TEMPLATE_ATTRIBUTE

    domain = get_domain("hotel")
    _, tokenizer = build_student(domain, TINY)
    options = dict(tokenizer.bayes_teach_template_options)
    tokenizer.save_pretrained(tmp_path / "tok")

    def loaded():
        return AutoTokenizer.from_pretrained(tmp_path / "tok")

    for wrong in (None, {**options, "round_markers": not options["round_markers"]}, {**options, "extra": True},
                  {**options, "restate": "yes"}):
        assert not adopt_saved_template(loaded(), domain, wrong)
    assert not adopt_saved_template(loaded(), flight_domain(), options)  # another domain's words: another template
    edited = loaded()
    edited.chat_template += " "
    assert not adopt_saved_template(edited, domain, options)
    assert getattr(edited, OWN_TEMPLATE_ATTRIBUTE, None) is None
    legacy = {name: value for name, value in options.items() if name != "design_prompts"}
    assert adopt_saved_template(loaded(), domain, legacy)  # a card written before design_prompts existed
    adopted = loaded()
    assert adopt_saved_template(adopted, domain, options)
    assert getattr(adopted, OWN_TEMPLATE_ATTRIBUTE) == adopted.chat_template
    options_, picks, choices = _dialogue(domain, seed=2)
    messages = dialogue_messages(domain, options_, picks, choices)
    assert [(s.text, s.role) for s in chat_segments(adopted, messages)] == _prefix_cuts(adopted, messages)
    assert tokenize_chat(adopted, messages) == tokenize_chat(tokenizer, messages)


def _prefix_cuts(tokenizer, messages):
    """[(text, role)] per message: where transformers' rendering of each prefix ends; an answer's generation
    prompt joins the segment before it (a conversation opening with an answer: a "prompt" segment)."""
    cuts, done = [], ""
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True) \
                if index else tokenizer.apply_chat_template([], tokenize=False, add_generation_prompt=True)
            if cuts:
                cuts[-1] = (cuts[-1][0] + prompt[len(done):], cuts[-1][1])
            else:
                cuts.append((prompt, "prompt"))
            done = prompt
        rendered = tokenizer.apply_chat_template(messages[:index + 1], tokenize=False)
        assert rendered.startswith(done)
        cuts.append((rendered[len(done):], message["role"]))
        done = rendered
    return cuts


@pytest.mark.parametrize("restate, answer_after_options, round_markers, rejected",
                         [(False, False, True, False), (True, True, True, False), (True, True, False, False),
                          (False, True, False, False), (True, True, False, True)])
def test_own_template_renders_as_transformers_sandbox_does(tmp_path, restate, answer_after_options, round_markers,
                                                           rejected):
    """The student's template, rendered with plain Jinja (eval.text.chat_format's fast path for templates this process
    built), gives exactly transformers' sandboxed rendering; a tokenizer read from disk keeps the sandbox."""
    from transformers import AutoTokenizer

    from eval.text.chat_format import OWN_TEMPLATE_ATTRIBUTE, encode_segment, render_chat, tokenize_segments

    domain = get_domain("hotel")
    tokenizer = build_tokenizer(domain, option_tokens=True, restate_choices=restate,
                                answer_after_options=answer_after_options, round_markers=round_markers,
                                restate_rejected=rejected)
    assert getattr(tokenizer, OWN_TEMPLATE_ATTRIBUTE) == tokenizer.chat_template
    conversations = []
    for seed in range(3):
        options, picks, choices = _dialogue(domain, seed)
        picks[1] = -1  # the "I am not sure" answer and its feedback
        conversations.append(dialogue_messages(domain, options, picks, choices))
        conversations.append(heldout_prompt_messages(domain, options[:2], picks[:2], choices[:2], options[3]))
    for messages in conversations:
        for end in range(1, len(messages) + 1):
            for prompt in (False, True):
                sandboxed = tokenizer.apply_chat_template(messages[:end], tokenize=False, add_generation_prompt=prompt)
                assert render_chat(tokenizer, messages[:end], add_generation_prompt=prompt) == sandboxed
        # the segments (from one rendering of the template's segmented twin) are the cuts of the prefixes'
        # sandboxed renderings, the generation prompt going with the text before each answer
        assert [(s.text, s.role) for s in chat_segments(tokenizer, messages)] == _prefix_cuts(tokenizer, messages)
        # the segments' ids, encoded in one call, are each segment's own encoding
        for segment, ids in tokenize_segments(tokenizer, messages):
            assert ids == encode_segment(tokenizer, segment.text)
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.chat_template == tokenizer.chat_template and getattr(loaded, OWN_TEMPLATE_ATTRIBUTE, None) is None
    assert render_chat(loaded, conversations[0]) == render_chat(tokenizer, conversations[0])
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # changed after marking: sandboxed
    assert render_chat(tokenizer, conversations[0]) == "".join(m["content"] for m in conversations[0])


@pytest.mark.parametrize("domain", [get_domain("hotel"), get_domain("flight")], ids=lambda d: d.name)
@pytest.mark.parametrize("n_rounds", [0, 3])
def test_a_designers_prompt_reads_as_the_student_renders_it(domain, n_rounds):
    """With design_prompts, a designer's prompt renders as: the instructions, each round's options with the
    choice and its restated description, the candidate sets each followed by its header, and the answer's set
    number right after the last header (question and round headers dropped); no unknown tokens, append-only,
    and the answer's digit is the only target."""
    from eval.text.dialogue import design_answer_text, design_prompt_messages, noun_title, options_text

    model, tokenizer = build_student(domain, dataclasses.replace(TINY, design_prompts=True))
    options = domain.draw_options(generator(1, "test-design"), (n_rounds,))
    choices = [(2 * r + 1) % domain.n_options for r in range(n_rounds)]
    candidates = domain.draw_options(generator(2, "test-design"), (4,))
    messages = design_prompt_messages(domain, options, choices, candidates) + [
        {"role": "assistant", "content": design_answer_text(3)}]
    instructions = messages[0]["content"].split("\n\n")[0]
    rounds = [f"{options_text(domain, options[r])}\nI chose {noun_title(domain)} {choices[r] + 1}. "
              f"Chosen: {domain.option_text(options[r][choices[r]])}" for r in range(n_rounds)]
    sets = "\n".join(f"{options_text(domain, candidates[k])}\nSet {k + 1}:" for k in range(4))  # headers after
    expected = "<|user|>" + "\n\n".join([instructions] + rounds + [sets]) + "\n3"
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    assert len(chat_segments(tokenizer, messages)) == 2  # raises ChatTemplateError unless append-only
    ids, mask = tokenize_chat(tokenizer, messages)
    assert tokenizer.unk_token_id not in ids
    assert [tokenizer.convert_ids_to_tokens(i) for i, m in zip(ids, mask) if m] == ["3"]
    # each option line is one token: the instructions, 3 per round + a choice ("I chose Flight", digit, ".")
    # and its restatement, a header + 3 per set, the answer
    assert len(ids) == 2 + n_rounds * (domain.n_options + 4) + 4 * (domain.n_options + 1) + 1
    # the answer digits start as the set headers (a choice among sets is a copy of one header)
    embeddings = model.get_input_embeddings().weight
    for k in (1, 4):
        digit, header = tokenizer.convert_tokens_to_ids([str(k), f"Set {k}:"])
        assert torch.equal(embeddings[digit], embeddings[header])


def test_designers_prompts_render_as_transformers_sandbox_does():
    """The design edits, rendered with plain Jinja, give exactly transformers' sandboxed rendering."""
    from eval.text.chat_format import render_chat
    from eval.text.dialogue import design_answer_text, design_prompt_messages

    domain = get_domain("hotel")
    tokenizer = build_tokenizer(domain, option_tokens=True, restate_choices=True, answer_after_options=True,
                                round_markers=False, design_prompts=True)
    options = domain.draw_options(generator(3, "test-design"), (4,))
    for n_rounds in range(5):
        candidates = domain.draw_options(generator(n_rounds, "test-design-sets"), (3,))
        messages = design_prompt_messages(domain, options[:n_rounds], [1, 0, 2, 1][:n_rounds], candidates) + [
            {"role": "assistant", "content": design_answer_text(2)}]
        for end in (1, 2):
            sandboxed = tokenizer.apply_chat_template(messages[:end], tokenize=False)
            assert render_chat(tokenizer, messages[:end]) == sandboxed
