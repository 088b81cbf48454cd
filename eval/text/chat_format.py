"""How a chat (a list of ``{"role", "content"}`` messages) becomes text and token ids.

One function renders a conversation for a tokenizer: its own chat template where it has one, a plain
fallback where it does not.  ``tokenize_chat`` tokenises a conversation *segment by segment* (one segment
per message, cut where the rendered text of a shorter conversation ends), so that

* the ids of a conversation's prefix are a prefix of the ids of the whole conversation, which is what lets
  the LM scorer reuse its KV cache across the options of a round and across rounds, and
* the assistant tokens (the loss mask for training) are known exactly.

Training (distill/) and evaluation (eval/) both call these functions, so a model is scored on exactly the
token sequence it was trained on.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ppl_models.errors import BayesTeachError

# The plain fallback for tokenizers without a chat template.  Append-only by construction.
PLAIN_ROLE_HEADERS = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}
PLAIN_TURN_END = "\n\n"


class ChatTemplateError(BayesTeachError):
    """The tokenizer's chat template cannot be used as an append-only conversation format."""


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render_plain(tokenizer, messages, add_generation_prompt: bool) -> str:
    bos = getattr(tokenizer, "bos_token", None) or ""
    eos = getattr(tokenizer, "eos_token", None) or ""
    parts = [bos]
    for message in messages:
        role = message["role"]
        if role not in PLAIN_ROLE_HEADERS:
            raise ChatTemplateError(f"unknown chat role {role!r}; expected system, user or assistant")
        end = eos + PLAIN_TURN_END if role == "assistant" else PLAIN_TURN_END
        parts.append(PLAIN_ROLE_HEADERS[role] + message["content"] + end)
    if add_generation_prompt:
        parts.append(PLAIN_ROLE_HEADERS["assistant"])
    return "".join(parts)


# A tokenizer whose attribute of this name equals its chat_template holds a template this process wrote itself
# (the embedded student's, distill/student/tokenizer.py): render_chat then renders it with plain Jinja instead of
# transformers' sandbox, which guards against a hub model's template and costs a few times the rendering time
# (benchmarks/bench_tokenize.py).  A tokenizer loaded from disk never has the attribute: its template is sandboxed.
OWN_TEMPLATE_ATTRIBUTE = "bayes_teach_own_chat_template"


def mark_own_chat_template(tokenizer) -> None:
    """Declare ``tokenizer.chat_template``, as it is now, one this process built (not read from a file)."""
    setattr(tokenizer, OWN_TEMPLATE_ATTRIBUTE, tokenizer.chat_template)


@functools.lru_cache(maxsize=8)
def _compiled_own_template(template: str):
    import jinja2

    # the options transformers compiles chat templates with (its render also passes the special tokens)
    environment = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    return environment.from_string(template)


def render_chat(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    """The conversation as text: the tokenizer's chat template, or the plain fallback without one."""
    if not messages:
        return _render_plain(tokenizer, [], add_generation_prompt) if not has_chat_template(tokenizer) else ""
    if has_chat_template(tokenizer):
        own = getattr(tokenizer, OWN_TEMPLATE_ATTRIBUTE, None)
        if own is not None and own == tokenizer.chat_template:
            return _compiled_own_template(own).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                                      **tokenizer.special_tokens_map)
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    return _render_plain(tokenizer, messages, add_generation_prompt)


@dataclass(frozen=True)
class ChatSegment:
    """A contiguous piece of the rendered conversation: one message (an assistant segment holds the
    assistant's words and its end-of-turn marker; the generation prompt before it belongs to the
    previous segment)."""

    text: str
    role: str


# Own templates (see OWN_TEMPLATE_ATTRIBUTE) may come with a segmented twin: the same template with SEGMENT_MARKER
# written after each message's text.  One rendering of the twin then gives every message's segment, where
# cutting renderings of each prefix costs a rendering per message (quadratic in the conversation's length; ~3/4
# of the time to tokenise a 6-round teaching dialogue).  The twin's contract, which the template's builder
# guarantees and tests check against the prefix cuts: the template is append-only, a message's text is what its
# loop iteration writes (an answer's iteration may open with the generation prompt, which then goes with the
# segment before, as in the cuts), and the generation prompt (written after the loop) does not depend on the
# messages.
SEGMENT_MARKER = "\x1e"  # ASCII record separator: no dialogue text holds it (a conversation that does is cut slowly)
_SEGMENTED_TWINS: dict[str, str] = {}


def register_segmented_template(template: str, segmented: str) -> None:
    """Declare ``segmented`` the segmented twin of the own chat template ``template`` (see above)."""
    _SEGMENTED_TWINS[template] = segmented


def _segmented_twin(tokenizer, messages) -> str | None:
    """The segmented twin of the tokenizer's template, where it is this process's own and has one, and the
    messages are plain text without the marker; else None."""
    template = getattr(tokenizer, "chat_template", None)
    if not template or getattr(tokenizer, OWN_TEMPLATE_ATTRIBUTE, None) != template or template not in _SEGMENTED_TWINS:
        return None
    if not all(isinstance(m.get("content"), str) and SEGMENT_MARKER not in m["content"] for m in messages):
        return None
    return _SEGMENTED_TWINS[template]


def chat_segments(tokenizer, messages) -> list[ChatSegment]:
    """Cut the rendered conversation into per-message segments whose concatenation is the whole text.

    Raises ChatTemplateError when the template is not append-only (the rendering of a shorter
    conversation is not a prefix of the longer one), because then neither KV reuse nor exact loss masks
    are well defined.
    """
    twin = _segmented_twin(tokenizer, messages)
    if twin is not None:
        return _segments_of_twin(tokenizer, twin, messages)
    segments: list[ChatSegment] = []
    done = ""
    render = _prefix_renderer(tokenizer, messages)
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            # The generation prompt ("<|assistant|>" or similar) goes with what precedes the answer.
            with_prompt = render(index, True)
            _check_prefix(done, with_prompt, index)
            if segments:
                segments[-1] = ChatSegment(segments[-1].text + with_prompt[len(done):], segments[-1].role)
            else:
                segments.append(ChatSegment(with_prompt, "prompt"))
            done = with_prompt
        rendered = render(index + 1, False)
        _check_prefix(done, rendered, index)
        segments.append(ChatSegment(rendered[len(done):], message["role"]))
        done = rendered
    return segments


def _segments_of_twin(tokenizer, twin: str, messages) -> list[ChatSegment]:
    """chat_segments from one rendering of the segmented twin: the same segments as the prefix cuts."""
    pieces = _compiled_own_template(twin).render(messages=list(messages), add_generation_prompt=True,
                                                 **tokenizer.special_tokens_map).split(SEGMENT_MARKER)
    if len(pieces) != len(messages) + 1:
        raise ChatTemplateError(f"the segmented chat template wrote {len(pieces) - 1} segment markers for "
                                f"{len(messages)} messages")
    prompt = pieces[-1]  # the generation prompt, the same before every assistant message (the twin's contract)
    segments: list[ChatSegment] = []
    for index, (message, text) in enumerate(zip(messages, pieces)):
        if message["role"] == "assistant":  # the prompt goes with what precedes the answer, as in the cuts
            # an answer's own text follows the prompt (a template that writes "<|assistant|>" both as the prompt
            # and at the start of an answer's iteration); one that does not is not append-only
            _check_prefix(prompt, text, index)
            text = text[len(prompt):]
            if segments:
                segments[-1] = ChatSegment(segments[-1].text + prompt, segments[-1].role)
            else:
                segments.append(ChatSegment(prompt, "prompt"))
        segments.append(ChatSegment(text, message["role"]))
    return segments


# Renderings of conversation prefixes, kept because evaluation renders the same history again and again: every
# held-out option set of a round (20 by default), and every candidate answer of each, shares the rounds before
# it.  Keyed by the tokenizer object (held here, so its id is never reused while cached), its chat template and
# special tokens as they are now, and the messages as (role, content) pairs.
PREFIX_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=PREFIX_CACHE_SIZE)
def _render_prefix(tokenizer, template_key: tuple, messages: tuple, add_generation_prompt: bool) -> str:
    return render_chat(tokenizer, [{"role": role, "content": content} for role, content in messages], add_generation_prompt)


def _prefix_renderer(tokenizer, messages):
    """``render(n, add_generation_prompt)``: the rendering of ``messages[:n]``, cached when every message is
    exactly a role and a string content (anything else is rendered afresh)."""
    if all(isinstance(m, dict) and len(m) == 2 and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
           for m in messages):
        pairs = tuple((m["role"], m["content"]) for m in messages)
        # what else the rendering reads: the template and the special tokens it may write (bos, eos, ...)
        template_key = (getattr(tokenizer, "chat_template", None), repr(sorted(tokenizer.special_tokens_map.items())))
        return lambda n, prompt: _render_prefix(tokenizer, template_key, pairs[:n], prompt)
    return lambda n, prompt: render_chat(tokenizer, messages[:n], add_generation_prompt=prompt)


def _check_prefix(shorter: str, longer: str, index: int) -> None:
    if not longer.startswith(shorter):
        raise ChatTemplateError(
            f"the chat template is not append-only: rendering message {index} changes the text of the "
            "messages before it, so prefixes cannot be scored or masked exactly"
        )


def generation_prompt_text(tokenizer, messages) -> str:
    """What follows the rendered ``messages`` when the assistant is about to answer."""
    base = render_chat(tokenizer, messages, add_generation_prompt=False)
    with_prompt = render_chat(tokenizer, messages, add_generation_prompt=True)
    _check_prefix(base, with_prompt, len(messages))
    return with_prompt[len(base):]


def encode_segment(tokenizer, text: str) -> list[int]:
    """Token ids of one segment; special tokens written in the text (bos, eos, template markers) map to
    their ids, and no extra bos/eos is added."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_segments(tokenizer, messages) -> list[tuple[ChatSegment, list[int]]]:
    """Each segment of the conversation (``chat_segments``) with its token ids."""
    segments = chat_segments(tokenizer, messages)
    cache = _segment_ids_cache(tokenizer)
    found = {segment.text: cache.get(segment.text) for segment in segments if segment.text}
    missing = [text for text, ids in found.items() if ids is None]
    # one call for the segments not seen before (each is encoded on its own, exactly as encode_segment would)
    for text, ids in zip(missing, tokenizer(missing, add_special_tokens=False)["input_ids"] if missing else []):
        found[text] = cache[text] = tuple(ids)
    return [(segment, list(found[segment.text]) if segment.text else []) for segment in segments]


SEGMENT_CACHE_SIZE = 8192


class _SegmentIds(dict):
    """Ids of recently encoded segment texts (a held-out prompt's history is encoded once, not 60 times); at
    SEGMENT_CACHE_SIZE entries it starts afresh."""

    def __setitem__(self, text, ids):
        if len(self) >= SEGMENT_CACHE_SIZE:
            self.clear()
        super().__setitem__(text, ids)


def _segment_ids_cache(tokenizer) -> _SegmentIds:
    """The tokenizer's own cache of segment ids (its vocabulary decides them, so it lives on the tokenizer
    object and goes with it; tokens added since, e.g. a pad token, start it afresh)."""
    size = len(tokenizer)
    cached = getattr(tokenizer, "_bayes_teach_segment_ids", None)
    if cached is None or cached[0] != size:
        cached = (size, _SegmentIds())
        tokenizer._bayes_teach_segment_ids = cached
    return cached[1]


def join_segments(segments: list[tuple[ChatSegment, list[int]]]) -> tuple[list[int], list[bool]]:
    """(input_ids, assistant_mask) of tokenised segments laid end to end."""
    input_ids: list[int] = []
    assistant_mask: list[bool] = []
    for segment, ids in segments:
        input_ids.extend(ids)
        assistant_mask.extend([segment.role == "assistant"] * len(ids))
    return input_ids, assistant_mask


def tokenize_chat(tokenizer, messages) -> tuple[list[int], list[bool]]:
    """(input_ids, assistant_mask) for a conversation, tokenised segment by segment.

    ``assistant_mask[i]`` is True where token i belongs to an assistant message (its words and end-of-turn
    marker), i.e. where a supervised fine-tuning loss applies.
    """
    return join_segments(tokenize_segments(tokenizer, messages))
