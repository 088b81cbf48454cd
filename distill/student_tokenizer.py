"""The embedded student's text side: a phrase-level tokenizer made for one domain and its chat template.

See ``distill.student`` for why the text is rendered this way (restated choices, the answer right after the
last option line, no round markers) and what each choice measured.
"""
from __future__ import annotations

import math
import re

from eval.dialogue_text import answer_text, feedback_text, noun_title, question_text, task_instructions
from ppl_models import Domain

SPECIAL_TOKENS = ["<pad>", "<unk>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
# After the phrases: words, single digits (any number is representable), single non-space symbols.
FALLBACK_PATTERN = r"[A-Za-z]+(?:'[a-z]+)?|\d|[^\sA-Za-z\d]"
MAX_ROUND_PHRASES = 20  # "Round 1." ... "Round 20." are single tokens (later rounds fall back to pieces)
MAX_OPTION_TOKENS = 30_000  # whole option lines become single tokens when a domain has at most this many
CHOSEN_PREFIX = "Chosen: "  # the restated chosen option (see student_chat_template)


def value_texts(domain: Domain) -> list[list[str]]:
    """Every value text of every feature, per feature, in value order."""
    return [[f.text(i) for i in range(len(f.values))] for f in domain.features]


def feature_value_phrases(domain: Domain) -> list[list[str]]:
    """Per feature, its "name: value" phrases in value order, with the ", " that separates it from the feature
    before it (", price: $370"); the first feature has none."""
    return [[f"{', ' if j else ''}{f.name}: {text}" for text in texts]
            for j, (f, texts) in enumerate(zip(domain.features, value_texts(domain)))]


def value_combinations(domain: Domain, limit: int = MAX_OPTION_TOKENS):
    """Every option's value indices, in value order; None when the option lines (``n_options`` per
    combination) would be more than ``limit`` tokens."""
    import itertools

    if domain.n_options * math.prod(len(f.values) for f in domain.features) > limit:
        return None
    return list(itertools.product(*[range(len(f.values)) for f in domain.features]))


def option_descriptions(domain: Domain, limit: int = MAX_OPTION_TOKENS):
    """Every option line ``eval.dialogue_text.options_text`` can write ("Hotel 2: distance to downtown: 3
    miles, price: $460, ..."), with its option number (0-based) and value indices: a list of
    (text, number, index tuple); None when there are more than ``limit`` of them."""
    combinations = value_combinations(domain, limit)
    if combinations is None:
        return None
    noun = noun_title(domain)
    return [(f"{noun} {k + 1}: {domain.option_text(index)}", k, index)
            for k in range(domain.n_options) for index in combinations]


def chosen_descriptions(domain: Domain, limit: int = MAX_OPTION_TOKENS):
    """The restated chosen options, "Chosen: distance to downtown: 3 miles, ...", with their value indices,
    in the order of ``value_combinations``; None when there are too many option lines."""
    combinations = value_combinations(domain, limit)
    if combinations is None:
        return None
    return [(CHOSEN_PREFIX + domain.option_text(index), index) for index in combinations]


def student_chat_template(domain: Domain, restate: bool = False, answer_after_options: bool = True,
                          round_markers: bool = True) -> str:
    """The student's chat template: ``<|role|>content<|end|>`` per message and ``<|assistant|>`` as the
    generation prompt, with optional changes.  Each turn's text depends only on the turns before it, so the
    template stays append-only whatever the options.

    ``restate``: a user turn whose feedback says "I prefer <Noun> k." starts with "Chosen: " and option k's
    description, copied from the options of the user turn before it.

    ``answer_after_options``: the answer's option number follows the last option line directly: the user
    turn drops its closing question and end marker, the generation prompt is empty, and an answer "The best
    option is Hotel 2." reads "\\n2": the option number is the whole answer, with no period or end marker to
    predict after it (the tokenizer drops whitespace).  The prediction is then made at the last option's
    position (see ``StudentConfig.answer_after_options``).  Any other answer text is kept as it is.

    ``round_markers=False`` (with ``answer_after_options``): the "Round k." lines are dropped too, so that a
    round after the last one trained on reads like the others.
    """
    noun = noun_title(domain)
    question = "\n" + question_text(domain)
    answer_prefix = answer_text(domain, 0).rsplit(" ", 1)[0] + " "  # "The best option is Hotel "
    # Both edits cut strings with split() rather than looping over lines: the sandboxed Jinja renderer
    # charges for every call, and line loops made tokenising 4x slower (3.5 vs 0.9 ms a 5-round dialogue).
    restated = (
        f"{{% for k in range(1, {domain.n_options + 1}) %}}"
        f"{{% if ('I prefer {noun} ' ~ k ~ '.') in message['content'] %}}"
        f"{{% set after = ns.previous.split('\\n{noun} ' ~ k ~ ': ', 1) %}}"
        f"{{% if after|length == 2 %}}{{{{ '{CHOSEN_PREFIX}' + after[1].split('\\n', 1)[0] + ' ' }}}}{{% endif %}}"
        "{% endif %}{% endfor %}"
    ) if restate else ""
    if answer_after_options:
        answer = f"{{{{ '\\n' + message['content'] | replace({answer_prefix!r}, '') | replace('.', '') }}}}"
        user = f"{{{{ message['content'] | replace({question!r}, '') }}}}"
        if not round_markers:
            # drop the line "Round k." (the text before it ends in a newline, the text after starts a line)
            user = (f"{{% set text = message['content'] | replace({question!r}, '') %}}"
                    "{% set cut = text.split('\\nRound ', 1) %}"
                    "{% set rest = cut[1].split('\\n', 1) if cut|length == 2 else [] %}"
                    "{% if rest|length == 2 and rest[0].endswith('.') and rest[0][:-1].isdigit() %}"
                    "{{ cut[0] + '\\n' + rest[1] }}{% else %}{{ text }}{% endif %}")
        content = "{% if message['role'] == 'assistant' %}" + answer + "{% else %}" + user + "{% endif %}"
        opening = "{% if message['role'] != 'assistant' %}{{ '<|' + message['role'] + '|>' }}{% endif %}"
        prompt = ""
    else:
        content = "{{ message['content'] + '<|end|>' }}"
        opening = "{{ '<|' + message['role'] + '|>' }}"
        prompt = "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    return (
        "{% set ns = namespace(previous='') %}"
        "{% for message in messages %}" + opening +
        "{% if message['role'] == 'user' %}" + restated + "{% set ns.previous = message['content'] %}{% endif %}"
        + content + "{% endfor %}" + prompt
    )


def description_pattern(domain: Domain) -> str:
    """A regex matching exactly the option descriptions of ``domain`` (one alternation per feature)."""
    return re.escape(", ").join(
        re.escape(f"{f.name}: ") + "(?:" + "|".join(re.escape(t) for t in sorted(texts, key=lambda t: (-len(t), t))) + ")"
        for f, texts in zip(domain.features, value_texts(domain))
    )


def option_description_pattern(domain: Domain) -> str:
    """A regex matching exactly the option lines of ``domain``: a header "Hotel k: " and a description."""
    header = "(?:" + "|".join(re.escape(f"{noun_title(domain)} {k + 1}: ") for k in range(domain.n_options)) + ")"
    return header + description_pattern(domain)


def domain_phrases(domain: Domain, max_rounds: int = MAX_ROUND_PHRASES, merge_values: bool = True) -> list[str]:
    """The phrases that become single tokens: fixed dialogue text, feature names and values."""
    noun = noun_title(domain)
    phrases = [task_instructions(domain), question_text(domain)]
    # answers and feedback, cut before the option number: "The best option is Hotel", "Not quite: I prefer Hotel"
    for text in (answer_text(domain, 0), feedback_text(domain, 0, 0), feedback_text(domain, 0, 1),
                 feedback_text(domain, -1, 0)):
        phrases.append(text.rsplit(" ", 1)[0])
    phrases.append(answer_text(domain, -1))
    phrases += [f"{noun} {i + 1}:" for i in range(max(domain.n_options, 9))]
    phrases += [f"Round {r}." for r in range(1, max_rounds + 1)]
    phrases += [f"{name}:" for name in domain.feature_names]
    phrases += [t for texts in value_texts(domain) for t in texts]
    if merge_values:
        phrases += [p for texts in feature_value_phrases(domain) for p in texts]
    return list(dict.fromkeys(p for p in phrases if p))


def split_pattern(phrases: list[str], first: tuple[str, ...] = ()) -> str:
    """``first`` (regexes) are tried before the phrases, longest phrase first: the regex takes the first match."""
    ordered = sorted(set(phrases), key=lambda p: (-len(p), p))
    return "|".join(list(first) + [re.escape(p) for p in ordered] + [FALLBACK_PATTERN])


def build_tokenizer(domain: Domain, merge_values: bool = True, option_tokens: bool = False,
                    restate_choices: bool = False, answer_after_options: bool = False, round_markers: bool = True):
    """A word/phrase-level PreTrainedTokenizerFast for ``domain`` with an append-only chat template; with
    ``option_tokens`` every whole option line is one token too (when there are few enough), and with
    ``restate_choices`` too, the template restates each chosen option; ``answer_after_options``: the answer's
    option number follows the last option line; ``round_markers=False``: no "Round k." lines (all three:
    ``student_chat_template``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    phrases = domain_phrases(domain, merge_values=merge_values)
    descriptions = option_descriptions(domain) if option_tokens else None
    restate = bool(descriptions) and restate_choices
    chosen = chosen_descriptions(domain) if restate else []
    line_pattern = option_description_pattern(domain)
    first = (line_pattern, re.escape(CHOSEN_PREFIX) + description_pattern(domain)) if restate else (line_pattern,)
    pattern = split_pattern(phrases, first=first if descriptions else ())
    # Vocabulary: the phrases plus every fallback piece of the fixed texts, single digits, letters-words of
    # the noun, and ASCII punctuation, so nothing the dialogue module writes for this domain is unknown.
    fallback = re.compile(FALLBACK_PATTERN)
    pieces = [str(d) for d in range(10)] + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    for phrase in phrases + [domain.noun, noun_title(domain), "Round", "option"]:
        pieces += fallback.findall(phrase)
    vocab_list = list(dict.fromkeys(SPECIAL_TOKENS + phrases + pieces + [text for text, _, _ in descriptions or []]
                                    + [text for text, _ in chosen]))
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab_list)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True)
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins tokens with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|end|>", additional_special_tokens=SPECIAL_TOKENS[3:])
    tokenizer.chat_template = student_chat_template(domain, restate, answer_after_options, round_markers)
    tokenizer.model_max_length = 10**6
    return tokenizer
