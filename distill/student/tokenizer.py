"""The embedded student's text side: a phrase-level tokenizer made for one domain and its chat template.

See ``distill.student.model`` for why the text is rendered this way (restated choices, the answer right after the
last option line, no round markers), and experiments/README.md for what each choice measured.  All fixed
wording (instructions, headers, answers, feedback) comes from the prompt template (``eval.text.dialogue``), so
a student built with a custom template reads exactly the text its teaching data holds; its chat template's
edits are derived from the same template (``template_parts``).
"""
from __future__ import annotations

import math
import re

from eval.text.chat_format import SEGMENT_MARKER, mark_own_chat_template, register_segmented_template
from eval.text.dialogue import (
    PromptTemplate, answer_text, default_template, design_answer_text, design_prompt_messages, noun_title, option_line,
    question_text, round_header, task_instructions,
)
from eval.text.prompt_template import PromptTemplateError
from ppl_models import Domain

SPECIAL_TOKENS = ["<pad>", "<unk>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
# After the phrases: words, single digits (any number is representable), single non-space symbols.
FALLBACK_PATTERN = r"[A-Za-z]+(?:'[a-z]+)?|\d|[^\sA-Za-z\d]"
MAX_ROUND_PHRASES = 20  # "Round 1." ... "Round 20." are single tokens (later rounds fall back to pieces)
MAX_OPTION_TOKENS = 30_000  # whole option lines become single tokens when a domain has at most this many
CHOSEN_PREFIX = "Chosen: "  # the restated chosen option (see student_chat_template)
REJECTED_PREFIX = "Rejected: "  # a restated option the user did not choose (restate_rejected)
# what student_chat_template is built from beyond the domain and prompt template (saved in the student card)
TEMPLATE_OPTION_NAMES = ("restate", "answer_after_options", "round_markers", "restate_rejected", "design_prompts")
DESIGN_SET_PHRASES = 9  # "Set 1:" ... "Set 9:" are single tokens (more candidate sets fall back to pieces)


def split_at(text: str, placeholder: str) -> tuple[str, str]:
    """(the text before, the text after) the first ``placeholder`` in ``text``."""
    before, _, after = text.partition(placeholder)
    return before, after


def template_parts(domain: Domain, template: PromptTemplate | None = None) -> dict:
    """The template's texts around each number, for the student's phrases and chat template: each value is
    (before, after) the number, e.g. "answer": ("The best option is Hotel ", ".") and "header": ("Hotel ", ": ")
    for the option line "Hotel 2: <description>"; "feedback_core" is the longest common ending of the three
    feedback texts when it holds the number ("I prefer Hotel ", "."), else None.  Raises PromptTemplateError when
    the option line's number does not come before its description (the student's option tokens need a header)."""
    template = template or default_template()
    line = option_line(domain, "{number}", "{description}", template)
    head, _ = split_at(line, "{description}")
    if "{number}" not in head:
        raise PromptTemplateError(f"prompt template {template.source}: the embedded student needs the option line's "
                                  "{number} before its {description}")
    nouns = {"noun": domain.noun, "Noun": noun_title(domain)}
    feedbacks = [template.fill(field, **nouns, number="{number}")
                 for field in ("feedback_right", "feedback_wrong", "feedback_after_no_answer")]
    common = ""
    while len(common) < min(map(len, feedbacks)) and len({f[-len(common) - 1:] for f in feedbacks}) == 1:
        common = feedbacks[0][-len(common) - 1:]
    cut = "\x00"  # the design question's text before its first placeholder identifies a designer's prompt
    design_question = template.fill("design_question", **nouns, round=cut, n_sets=cut).split(cut)[0]
    return {
        "design_question": design_question,
        "design_choice": split_at(template.fill("design_choice", **nouns, number="{number}"), "{number}"),
        "design_answer": split_at(design_answer_text("{number}", template), "{number}"),
        "design_set": split_at(template.fill("design_set_header", number="{number}"), "{number}"),
        "answer": split_at(answer_text(domain, "{number}", template), "{number}"),
        "header": split_at(head, "{number}"),
        "round": split_at(template.fill("round_header", round="{round}"), "{round}"),
        "feedback": [split_at(text, "{number}") for text in feedbacks],
        "feedback_core": split_at(common, "{number}") if "{number}" in common else None,
    }


def option_header(domain: Domain, number: int, template: PromptTemplate | None = None) -> str:
    """The phrase that starts option ``number``'s line (1-based), without trailing spaces: "Hotel 2:"."""
    before, after = template_parts(domain, template)["header"]
    return f"{before}{number}{after}".rstrip()


def set_header(number: int, template: PromptTemplate | None = None) -> str:
    """The phrase that heads candidate set ``number`` (1-based) in a designer's prompt, stripped: "Set 2:"."""
    return (template or default_template()).fill("design_set_header", number=number).strip()


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


def option_descriptions(domain: Domain, limit: int = MAX_OPTION_TOKENS, template: PromptTemplate | None = None):
    """Every option line ``eval.text.dialogue.options_text`` can write ("Hotel 2: distance to downtown: 3
    miles, price: $460, ..."), with its option number (0-based) and value indices: a list of
    (text, number, index tuple); None when there are more than ``limit`` of them."""
    combinations = value_combinations(domain, limit)
    if combinations is None:
        return None
    return [(option_line(domain, k + 1, domain.option_text(index), template), k, index)
            for k in range(domain.n_options) for index in combinations]


def chosen_descriptions(domain: Domain, limit: int = MAX_OPTION_TOKENS, prefix: str = CHOSEN_PREFIX):
    """The restated chosen options, "Chosen: distance to downtown: 3 miles, ...", with their value indices,
    in the order of ``value_combinations``; None when there are too many option lines.  ``prefix``
    REJECTED_PREFIX: the restated options not chosen ("Rejected: ...")."""
    combinations = value_combinations(domain, limit)
    if combinations is None:
        return None
    return [(prefix + domain.option_text(index), index) for index in combinations]


def student_chat_template(domain: Domain, restate: bool = False, answer_after_options: bool = True,
                          round_markers: bool = True, template: PromptTemplate | None = None,
                          restate_rejected: bool = False, segment_marker: str = "", design_prompts: bool = False) -> str:
    """The student's chat template: ``<|role|>content<|end|>`` per message and ``<|assistant|>`` as the
    generation prompt, with optional changes.  Each turn's text depends only on the turns before it, so the
    template stays append-only whatever the options.

    ``restate``: a user turn whose feedback says "I prefer <Noun> k." starts with "Chosen: " and option k's
    description, copied from the options of the user turn before it.  ``restate_rejected`` (with ``restate``):
    then "Rejected: " and the description of each other option of that turn, in option order.

    ``answer_after_options``: the answer's option number follows the last option line directly: the user
    turn drops its closing question and end marker, the generation prompt is empty, and an answer "The best
    option is Hotel 2." reads "\\n2": the option number is the whole answer, with no period or end marker to
    predict after it (the tokenizer drops whitespace).  The prediction is then made at the last option's
    position (see ``StudentConfig.answer_after_options``).  Any other answer text is kept as it is.

    ``round_markers=False`` (with ``answer_after_options``): the "Round k." lines are dropped too, so that a
    round after the last one trained on reads like the others.

    ``design_prompts`` (with ``answer_after_options``): a designer's prompt (``design_prompt_messages``: the
    rounds so far, each closed by "I chose Flight k.", then the labelled candidate sets and a question) gets the
    same edits: its closing question is dropped, so that the answer "Show me set 2." reads "\n2" right after
    the last candidate's last option line; with ``restate`` each round's "I chose Flight k." is followed by
    "Chosen: " and option k's description; without ``round_markers`` the "Round k." lines are dropped.

    The texts these edits look for (the feedback, option headers, answer, question, round header, and the
    designer's choice, question and answer) are the prompt template's (``template_parts``; the default's are
    quoted above).

    ``segment_marker``: written after each message's text (the segmented twin that
    ``eval.text.chat_format.register_segmented_template`` takes: one rendering gives every message's segment).
    """
    parts = template_parts(domain, template)
    question = "\n" + question_text(domain, template)
    answer_prefix, answer_suffix = parts["answer"]  # "The best option is Hotel ", "."
    header_before, header_after = parts["header"]  # "Hotel ", ": "
    round_before, round_after = parts["round"]  # "Round ", "."
    if parts["feedback_core"] is not None:  # one test for the three feedbacks: "I prefer Hotel k." in the turn
        feedback_before, feedback_after = parts["feedback_core"]
        says_prefer = f"({feedback_before!r} ~ k ~ {feedback_after!r}) in message['content']"
    else:
        says_prefer = " or ".join(f"message['content'].startswith({before!r} ~ k ~ {after!r})"
                                  for before, after in parts["feedback"])
    # Both edits cut strings with split() rather than looping over lines: the sandboxed Jinja renderer
    # charges for every call, and line loops made tokenising several times slower.
    restated = (
        f"{{% for k in range(1, {domain.n_options + 1}) %}}"
        f"{{% if {says_prefer} %}}"
        f"{{% set after = ns.previous.split({chr(10) + header_before!r} ~ k ~ {header_after!r}, 1) %}}"
        f"{{% if after|length == 2 %}}{{{{ '{CHOSEN_PREFIX}' + after[1].split('\\n', 1)[0] + ' ' }}}}{{% endif %}}"
        + (f"{{% for j in range(1, {domain.n_options + 1}) %}}{{% if j != k %}}"
           f"{{% set other = ns.previous.split({chr(10) + header_before!r} ~ j ~ {header_after!r}, 1) %}}"
           f"{{% if other|length == 2 %}}{{{{ '{REJECTED_PREFIX}' + other[1].split('\\n', 1)[0] + ' ' }}}}{{% endif %}}"
           "{% endif %}{% endfor %}" if restate_rejected else "")
        + "{% endif %}{% endfor %}"
    ) if restate else ""
    if answer_after_options:
        suffix_cut = f" | replace({answer_suffix!r}, '')" if answer_suffix else ""
        answer = f"{{{{ '\\n' + message['content'] | replace({answer_prefix!r}, ''){suffix_cut} }}}}"
        user = f"{{{{ message['content'] | replace({question!r}, '') }}}}"
        if not round_markers:
            # drop the line "Round k." (the text before it ends in a newline, the text after starts a line)
            if not round_before:
                raise PromptTemplateError("the embedded student without round markers needs text before {round} in the "
                                 "prompt template's round_header")
            number = f"rest[0][:-{len(round_after)}]" if round_after else "rest[0]"
            user = (f"{{% set text = message['content'] | replace({question!r}, '') %}}"
                    f"{{% set cut = text.split({chr(10) + round_before!r}, 1) %}}"
                    "{% set rest = cut[1].split('\\n', 1) if cut|length == 2 else [] %}"
                    f"{{% if rest|length == 2 and rest[0].endswith({round_after!r}) and {number}.isdigit() %}}"
                    "{{ cut[0] + '\\n' + rest[1] }}{% else %}{{ text }}{% endif %}")
        if design_prompts:
            answer = answer.replace("message['content']", f"message['content'] | replace({parts['design_answer'][0]!r}, '')", 1)
            user = (f"{{% if {chr(10) + parts['design_question']!r} in message['content'] %}}"
                    + _design_user(domain, parts, restate, round_markers) + "{% else %}" + user + "{% endif %}")
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
        + content + (f"{{{{ {segment_marker!r} }}}}" if segment_marker else "") + "{% endfor %}" + prompt
    )


def _design_user(domain: Domain, parts: dict, restate: bool, round_markers: bool) -> str:
    """Jinja for a designer's prompt in the student's rendering (see ``student_chat_template``): its blocks
    (instructions, one per observed round, the candidate sets with the question) are separated by blank
    lines; the question is cut off the last block, whose set headers follow their sets' options."""
    header_before, header_after = parts["header"]
    choice_before, choice_after = parts["design_choice"]
    round_before = parts["round"][0]
    keep_round = "block" if round_markers or not round_before else (
        f"(block.split('\\n', 1)[1] if block.startswith({round_before!r}) and '\\n' in block else block)")
    chosen = (
        f"{{% for k in range(1, {domain.n_options + 1}) %}}"
        f"{{% if block.endswith({chr(10) + choice_before!r} ~ k ~ {choice_after!r}) %}}"
        f"{{% set after = block.split({chr(10) + header_before!r} ~ k ~ {header_after!r}, 1) %}}"
        f"{{% if after|length == 2 %}}{{{{ ' {CHOSEN_PREFIX}' + after[1].split('\\n', 1)[0] }}}}{{% endif %}}"
        "{% endif %}{% endfor %}"
    ) if restate else ""
    set_before, set_after = parts["design_set"]
    number_end = f"-{len(set_after)}" if set_after else ""
    is_header = (f"line.startswith({set_before!r}) and line.endswith({set_after!r}) and "
                 f"line[{len(set_before)}:{number_end}].isdigit()")
    # each set's header moves after its options: the header's position then sees its own set (a causal
    # model's header cannot see the options that follow it), and the answer's digit copies that header
    sets = (
        "{% set sets = namespace(header='', count=0, first=true) %}"
        f"{{% for line in block.split({chr(10) + parts['design_question']!r}, 1)[0].split('\\n') %}}"
        f"{{% if {is_header} %}}{{% set sets.header = line %}}{{% set sets.count = 0 %}}"
        "{% else %}{% if not sets.first %}{{ '\\n' }}{% endif %}{% set sets.first = false %}{{ line }}"
        "{% set sets.count = sets.count + 1 %}"
        f"{{% if sets.count == {domain.n_options} and sets.header %}}{{{{ '\\n' + sets.header }}}}{{% endif %}}"
        "{% endif %}{% endfor %}"
    )
    return (
        "{% for block in message['content'].split('\\n\\n') %}{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
        f"{{% if loop.last %}}{sets}"
        f"{{% else %}}{{{{ {keep_round} }}}}{chosen}{{% endif %}}"
        "{% endfor %}"
    )


def own_chat_template(domain: Domain, options: dict, template: PromptTemplate | None = None) -> str:
    """``student_chat_template(domain, **options)``, with its segmented twin registered
    (``eval.text.chat_format.register_segmented_template``): the student's template as this process builds it."""
    built = student_chat_template(domain, **options, template=template)
    register_segmented_template(built, student_chat_template(domain, **options, template=template,
                                                             segment_marker=SEGMENT_MARKER))
    return built


def adopt_saved_template(tokenizer, domain: Domain, options: dict | None, template: PromptTemplate | None = None) -> bool:
    """Mark a student tokenizer read from disk as rendering this process's own template (plain Jinja, one
    rendering of the segmented twin per conversation), when its chat template is exactly the one ``options``
    (the student card's ``chat_template_options``) and ``template`` build for ``domain``; whether it was.  Any
    other template, edited or foreign, keeps transformers' sandbox."""
    if isinstance(options, dict) and "design_prompts" not in options:
        options = {**options, "design_prompts": False}  # a card written before students read designers' prompts
    if not isinstance(options, dict) or set(options) != set(TEMPLATE_OPTION_NAMES):
        return False
    if not all(isinstance(value, bool) for value in options.values()):
        return False
    if getattr(tokenizer, "chat_template", None) != own_chat_template(domain, options, template):
        return False
    mark_own_chat_template(tokenizer)
    return True


def description_pattern(domain: Domain) -> str:
    """A regex matching exactly the option descriptions of ``domain`` (one alternation per feature)."""
    return re.escape(", ").join(
        re.escape(f"{f.name}: ") + "(?:" + "|".join(re.escape(t) for t in sorted(texts, key=lambda t: (-len(t), t))) + ")"
        for f, texts in zip(domain.features, value_texts(domain))
    )


def option_description_pattern(domain: Domain, template: PromptTemplate | None = None) -> str:
    """A regex matching exactly the option lines of ``domain``: a header "Hotel k: " and a description."""
    before, after = template_parts(domain, template)["header"]
    header = "(?:" + "|".join(re.escape(f"{before}{k + 1}{after}") for k in range(domain.n_options)) + ")"
    return header + description_pattern(domain)


def design_phrases(domain: Domain, template: PromptTemplate | None = None) -> list[str]:
    """The fixed texts of a designer's prompt that become single tokens: its instructions for 2 to
    ``DESIGN_SET_PHRASES`` candidate sets, "Set k:", "I chose Flight", "Show me set" and the question's words."""
    import torch

    parts = template_parts(domain, template)
    blank = torch.zeros((DESIGN_SET_PHRASES, domain.n_options, len(domain.features)), dtype=torch.long)
    instructions = [design_prompt_messages(domain, [], [], blank[:n_sets], template)[0]["content"].split("\n\n")[0]
                    for n_sets in range(2, DESIGN_SET_PHRASES + 1)]
    return (instructions + [set_header(k, template) for k in range(1, DESIGN_SET_PHRASES + 1)]
            + [parts["design_choice"][0].rstrip(), parts["design_answer"][0].rstrip(), parts["design_question"].strip()])


def domain_phrases(domain: Domain, max_rounds: int = MAX_ROUND_PHRASES, merge_values: bool = True,
                   template: PromptTemplate | None = None, design_prompts: bool = False) -> list[str]:
    """The phrases that become single tokens: fixed dialogue text, feature names and values (and with
    ``design_prompts`` the designer's prompt's, ``design_phrases``)."""
    parts = template_parts(domain, template)
    phrases = [task_instructions(domain, template), question_text(domain, template)]
    if design_prompts:
        phrases += design_phrases(domain, template)
    # answers and feedback, cut before the option number: "The best option is Hotel", "Not quite: I prefer Hotel"
    for before, _ in [parts["answer"]] + parts["feedback"]:
        phrases.append(before.rstrip())
    phrases.append(answer_text(domain, -1, template))
    phrases += [option_header(domain, i + 1, template) for i in range(max(domain.n_options, 9))]
    phrases += [round_header(r - 1, template) for r in range(1, max_rounds + 1)]
    phrases += [f"{name}:" for name in domain.feature_names]
    phrases += [t for texts in value_texts(domain) for t in texts]
    if merge_values:
        phrases += [p for texts in feature_value_phrases(domain) for p in texts]
    # what follows a number ("." after "Hotel 2"), when it is more than one fallback piece
    phrases += [after.strip() for _, after in [parts["answer"]] + parts["feedback"]
                if len(re.findall(FALLBACK_PATTERN, after)) > 1]
    return list(dict.fromkeys(p for p in phrases if p))


def split_pattern(phrases: list[str], first: tuple[str, ...] = ()) -> str:
    """``first`` (regexes) are tried before the phrases, longest phrase first: the regex takes the first match."""
    ordered = sorted(set(phrases), key=lambda p: (-len(p), p))
    return "|".join(list(first) + [re.escape(p) for p in ordered] + [FALLBACK_PATTERN])


def build_tokenizer(domain: Domain, merge_values: bool = True, option_tokens: bool = False,
                    restate_choices: bool = False, answer_after_options: bool = False, round_markers: bool = True,
                    template: PromptTemplate | None = None, restate_rejected: bool = False, design_prompts: bool = False):
    """A word/phrase-level PreTrainedTokenizerFast for ``domain`` with an append-only chat template; with
    ``option_tokens`` every whole option line is one token too (when there are few enough), and with
    ``restate_choices`` too, the template restates each chosen option (and with ``restate_rejected`` the
    others of its round); ``answer_after_options``: the answer's
    option number follows the last option line; ``round_markers=False``: no "Round k." lines (all three:
    ``student_chat_template``); ``template``: the prompt template whose text it reads (default: the shipped one);
    ``design_prompts``: it reads designers' prompts too (``design_phrases``, ``student_chat_template``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    phrases = domain_phrases(domain, merge_values=merge_values, template=template, design_prompts=design_prompts)
    descriptions = option_descriptions(domain, template=template) if option_tokens else None
    restate = bool(descriptions) and restate_choices
    chosen = chosen_descriptions(domain) if restate else []
    rejected = chosen_descriptions(domain, prefix=REJECTED_PREFIX) if restate and restate_rejected else []
    line_pattern = option_description_pattern(domain, template)
    first = (line_pattern, re.escape(CHOSEN_PREFIX) + description_pattern(domain)) if restate else (line_pattern,)
    if rejected:
        first += (re.escape(REJECTED_PREFIX) + description_pattern(domain),)
    pattern = split_pattern(phrases, first=first if descriptions else ())
    # Vocabulary: the phrases plus every fallback piece of the fixed texts, single digits, letters-words of
    # the noun, and ASCII punctuation, so nothing the dialogue module writes for this domain is unknown.
    fallback = re.compile(FALLBACK_PATTERN)
    pieces = [str(d) for d in range(10)] + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    parts = template_parts(domain, template)
    around_numbers = [text for pair in [parts["answer"], parts["header"], parts["round"]] + parts["feedback"] for text in pair]
    if design_prompts:
        around_numbers += [text for key in ("design_choice", "design_answer", "design_set") for text in parts[key]]
    for phrase in phrases + [domain.noun, noun_title(domain), "Round", "option"] + around_numbers:
        pieces += fallback.findall(phrase)
    vocab_list = list(dict.fromkeys(SPECIAL_TOKENS + phrases + pieces + [text for text, _, _ in descriptions or []]
                                    + [text for text, _ in chosen + rejected]))
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab_list)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True)
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins tokens with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|end|>", additional_special_tokens=SPECIAL_TOKENS[3:])
    # what the chat template is built from (saved in the student card, so that a later process can rebuild it)
    tokenizer.bayes_teach_template_options = dict(zip(TEMPLATE_OPTION_NAMES, (
        restate, answer_after_options, round_markers, bool(rejected), design_prompts)))
    tokenizer.chat_template = own_chat_template(domain, tokenizer.bayes_teach_template_options, template)
    mark_own_chat_template(tokenizer)  # rendered without transformers' sandbox in this process (eval/text/chat_format.py)
    tokenizer.model_max_length = 10**6
    return tokenizer
