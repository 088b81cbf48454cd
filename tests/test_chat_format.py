"""eval.text.chat_format on locally built tokenizers: rendering, the plain fallback, the prefix property of
``tokenize_chat`` and its assistant mask."""
import pytest

from eval.text.chat_format import (
    ChatTemplateError,
    chat_segments,
    generation_prompt_text,
    render_chat,
    tokenize_chat,
)
from tiny_lm import build_tokenizer, flight_dialogue_messages, option_answer


@pytest.fixture(scope="module")
def tokenizers():
    return {"template": build_tokenizer(chat_template=True), "plain": build_tokenizer(chat_template=False)}


def full_conversation(n_rounds=3, system=True):
    """A conversation of n_rounds user turns, each answered by the assistant."""
    rounds = flight_dialogue_messages(seed=7, n_rounds=n_rounds, system=system)
    return rounds[-1] + [{"role": "assistant", "content": option_answer("Flight", 2)}]


def test_template_rendering_and_generation_prompt(tokenizers):
    tokenizer = tokenizers["template"]
    messages = [{"role": "user", "content": "Hi"}]
    assert render_chat(tokenizer, messages) == "<s><|user|>\nHi<|end|>\n"
    assert render_chat(tokenizer, messages, add_generation_prompt=True) == "<s><|user|>\nHi<|end|>\n<|assistant|>\n"
    assert generation_prompt_text(tokenizer, messages) == "<|assistant|>\n"


def test_plain_fallback_without_template(tokenizers):
    tokenizer = tokenizers["plain"]
    assert not tokenizer.chat_template
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Flight 1"}]
    assert render_chat(tokenizer, messages) == "<s>### User:\nHi\n\n### Assistant:\nFlight 1</s>\n\n"
    assert generation_prompt_text(tokenizer, messages[:1]) == "### Assistant:\n"


@pytest.mark.parametrize("kind", ["template", "plain"])
def test_ids_decode_to_rendered_text(tokenizers, kind):
    tokenizer = tokenizers[kind]
    messages = full_conversation()
    ids, mask = tokenize_chat(tokenizer, messages)
    assert len(ids) == len(mask)
    assert tokenizer.decode(ids) == render_chat(tokenizer, messages)


@pytest.mark.parametrize("kind", ["template", "plain"])
def test_prefix_ids_are_prefixes_of_whole(tokenizers, kind):
    tokenizer = tokenizers[kind]
    messages = full_conversation()
    whole, whole_mask = tokenize_chat(tokenizer, messages)
    for end in range(1, len(messages)):
        prefix, prefix_mask = tokenize_chat(tokenizer, messages[:end])
        if messages[end]["role"] == "assistant":
            # The generation prompt belongs to the segment before the answer: the prefix lacks it.
            prompt_tokens = tokenize_chat(tokenizer, messages[: end + 1])[0]
            assert prompt_tokens[: len(prefix)] == prefix
        assert whole[: len(prefix)] == prefix
        assert whole_mask[: len(prefix)] == prefix_mask


@pytest.mark.parametrize("kind,end_of_turn", [("template", "<|end|>\n"), ("plain", "</s>\n\n")])
def test_assistant_mask_covers_exactly_the_answers(tokenizers, kind, end_of_turn):
    tokenizer = tokenizers[kind]
    messages = full_conversation(n_rounds=3)
    ids, mask = tokenize_chat(tokenizer, messages)
    runs, current = [], []
    for token, masked in zip(ids, mask):
        if masked:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [tokenizer.decode(run) for run in runs] == [answer + end_of_turn for answer in answers]
    unmasked_text = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert all(answer not in unmasked_text for answer in answers)


def test_segments_concatenate_to_rendering(tokenizers):
    tokenizer = tokenizers["template"]
    messages = full_conversation()
    segments = chat_segments(tokenizer, messages)
    assert "".join(s.text for s in segments) == render_chat(tokenizer, messages)
    assert [s.role for s in segments] == [m["role"] for m in messages]
    assert segments[-2].text.endswith("<|assistant|>\n")


def test_non_append_only_template_is_refused():
    tokenizer = build_tokenizer(chat_template=False)
    # Renders only the last message: a longer conversation does not extend a shorter one.
    tokenizer.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    with pytest.raises(ChatTemplateError, match="append-only"):
        tokenize_chat(tokenizer, messages)


def test_cached_prefix_renderings_follow_the_template_and_the_vocabulary():
    """chat_segments/tokenize_chat reuse renderings and ids of prefixes seen before; a changed chat template
    or an added token is never answered from the cache."""
    tokenizer = build_tokenizer(chat_template=True)
    messages = full_conversation()

    def uncached_segments(messages):  # the definition, rendering every prefix afresh
        texts, done = [], ""
        for index, message in enumerate(messages):
            if message["role"] == "assistant":
                with_prompt = render_chat(tokenizer, messages[:index], add_generation_prompt=True)
                texts[-1] += with_prompt[len(done):]
                done = with_prompt
            rendered = render_chat(tokenizer, messages[: index + 1])
            texts.append(rendered[len(done):])
            done = rendered
        return texts

    for _ in range(2):  # the second time from the cache
        assert [s.text for s in chat_segments(tokenizer, messages)] == uncached_segments(messages)
    ids, _ = tokenize_chat(tokenizer, messages)
    assert ids == [t for text in uncached_segments(messages) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    # a message with more than role and content is rendered afresh, with the same result
    tagged = [dict(m, name="x") for m in messages]
    assert [s.text for s in chat_segments(tokenizer, tagged)] == [s.text for s in chat_segments(tokenizer, messages)]
    # another template: other text
    tokenizer.chat_template = tokenizer.chat_template.replace("<|end|>", "<|end|><|end|>")
    assert [s.text for s in chat_segments(tokenizer, messages)] == uncached_segments(messages)
    assert "<|end|><|end|>" in chat_segments(tokenizer, messages)[0].text
    # another end-of-sequence token, which the plain fallback writes after each answer: other text
    plain = build_tokenizer(chat_template=False)
    first = "".join(s.text for s in chat_segments(plain, messages))
    plain.eos_token = "<|end|>"
    assert "".join(s.text for s in chat_segments(plain, messages)) == render_chat(plain, messages) != first
    # a token added to the vocabulary: the same text, new ids
    before, _ = tokenize_chat(tokenizer, messages)
    tokenizer.add_tokens(["Flight 2"])
    after, _ = tokenize_chat(tokenizer, messages)
    assert after != before and tokenizer.convert_tokens_to_ids("Flight 2") in after


def test_a_full_segment_cache_starts_afresh_without_losing_a_conversation(monkeypatch):
    import eval.text.chat_format as chat_format

    tokenizer = build_tokenizer(chat_template=True)
    monkeypatch.setattr(chat_format, "SEGMENT_CACHE_SIZE", 2)  # fewer entries than one conversation's segments
    for n_rounds in (2, 3, 2, 3):
        messages = full_conversation(n_rounds=n_rounds)
        ids, _ = tokenize_chat(tokenizer, messages)
        segments = chat_segments(tokenizer, messages)
        assert len(segments) > 2
        assert ids == [t for s in segments for t in tokenizer(s.text, add_special_tokens=False)["input_ids"]]
