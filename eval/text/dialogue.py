"""How a recommendation dialogue reads to a language model: the single source of every prompt.

Teaching data (distill/) and evaluation prompts (eval/) are both built here, so they cannot drift apart.
Nouns, feature names and value formats all come from the domain declaration, so a new domain needs no new
prompt code.  The wording comes from a prompt template (``eval/text/prompt_template.py``; every function takes
``template``, default: the shipped ``eval/text/templates/default.json``); the layout is fixed here.  With the
default template a dialogue reads::

    user:      <task explanation>

               Round 1.
               Flight 1: departure time: 10:48 AM, ...
               Flight 2: ...
               Flight 3: ...
               Which flight is best for me?
    assistant: The best option is Flight 2.
    user:      Not quite: I prefer Flight 3.

               Round 2. ...
    assistant: The best option is Flight 1.
    ...
"""
from __future__ import annotations

import re
from typing import Sequence

from ppl_models import Domain

from eval.text.prompt_template import PromptTemplate, default_template, load_template  # noqa: F401  (load_template: re-export)

ANSWER_PLACEHOLDER = "N"  # how the instructions and belief question show the number to answer with


def noun_title(domain: Domain) -> str:
    return domain.noun[:1].upper() + domain.noun[1:]


def _nouns(domain: Domain) -> dict:
    return {"noun": domain.noun, "Noun": noun_title(domain)}


def task_instructions(domain: Domain, template: PromptTemplate | None = None) -> str:
    """The first user turn's explanation of the task (the study's protocol, in our own words)."""
    template = template or default_template()
    names = domain.feature_names
    features = names[-1]  # one feature reads "about price", not "about  and price"
    if len(names) > 1:
        features = template.fields["feature_separator"].join(names[:-1]) + template.fields["feature_last_separator"] + features
    return template.fill("instructions", **_nouns(domain), features=features, n_options=domain.n_options,
                         answer_format=answer_text(domain, ANSWER_PLACEHOLDER, template))


def option_line(domain: Domain, number, description: str, template: PromptTemplate | None = None) -> str:
    """One option's line, e.g. "Flight 2: departure time: 10:48 AM, ..." (``number`` is 1-based)."""
    return (template or default_template()).fill("option_line", **_nouns(domain), number=number, description=description)


def options_text(domain: Domain, option_index_round, template: PromptTemplate | None = None) -> str:
    """The options of one round, one line each: "Flight 1: departure time: 10:48 AM, ..."."""
    return "\n".join(option_line(domain, i + 1, domain.option_text(row), template)
                     for i, row in enumerate(option_index_round.tolist()))


def question_text(domain: Domain, template: PromptTemplate | None = None) -> str:
    """The question that closes every round: "Which hotel is best for me?"."""
    return (template or default_template()).fill("question", **_nouns(domain))


def round_header(round_number: int, template: PromptTemplate | None = None) -> str:
    """The line that opens round ``round_number`` (0-based): "Round 1."."""
    return (template or default_template()).fill("round_header", round=round_number + 1)


def round_text(domain: Domain, round_number: int, option_index_round, template: PromptTemplate | None = None) -> str:
    return (f"{round_header(round_number, template)}\n{options_text(domain, option_index_round, template)}\n"
            f"{question_text(domain, template)}")


def answer_text(domain: Domain, pick, template: PromptTemplate | None = None) -> str:
    """The assistant's answer naming option ``pick`` (0-based; a negative pick is an answer that named no
    option, as an LM's unparseable reply in generate mode; a string is written as it is, e.g. "N")."""
    template = template or default_template()
    if isinstance(pick, str):
        return template.fill("answer", **_nouns(domain), number=pick)
    if int(pick) < 0:
        return template.fill("no_answer", **_nouns(domain))
    return template.fill("answer", **_nouns(domain), number=int(pick) + 1)


def candidate_answers(domain: Domain, template: PromptTemplate | None = None) -> list[str]:
    """The answers an assistant can give in a round, one per option (what LM scoring compares)."""
    return [answer_text(domain, o, template) for o in range(domain.n_options)]


def feedback_text(domain: Domain, pick: int, choice: int, template: PromptTemplate | None = None) -> str:
    """The user's reply after the assistant recommended ``pick`` and the user prefers ``choice``."""
    template = template or default_template()
    field = "feedback_after_no_answer" if int(pick) < 0 else "feedback_right" if int(pick) == int(choice) else "feedback_wrong"
    return template.fill(field, **_nouns(domain), number=int(choice) + 1)


def match_answer(domain: Domain, text: str, template: PromptTemplate | None = None) -> int | None:
    """The 0-based option named by the first answer in ``text`` written exactly as the template writes it
    (None when there is none, or it names an option out of range); a lenient parser can take over after it."""
    return _match_number(answer_text(domain, "{number}", template), text, domain.n_options)


def _match_number(filled: str, text: str, n: int) -> int | None:
    """The 1-based number in ``text`` where ``filled`` (a text with one "{number}") matches, as a 0-based index."""
    first, *rest = filled.split("{number}")  # a number written twice must be the same number
    pattern = re.escape(first) + r"(\d+)" + r"\1".join(re.escape(part) for part in rest)
    found = re.search(pattern, text)
    if found is None:
        return None
    number = int(found.group(1))
    return number - 1 if 1 <= number <= n else None


def dialogue_messages(domain: Domain, option_index, picks: Sequence[int], choices: Sequence[int],
                      n_rounds: int | None = None, template: PromptTemplate | None = None):
    """Chat messages of a dialogue through the assistant's answer in round ``n_rounds`` (default: all).

    ``option_index``: long [R, O, F]; ``picks``: the assistant's pick per round; ``choices``: the user's.
    The result ends with an assistant message: one teaching example per prefix length.
    """
    n_rounds = len(picks) if n_rounds is None else n_rounds
    messages = []
    for r in range(n_rounds):
        messages.append({"role": "user", "content": user_turn(domain, option_index, picks, choices, r, template)})
        messages.append({"role": "assistant", "content": answer_text(domain, picks[r], template)})
    return messages


def turn_opening(domain: Domain, picks, choices, r: int, template: PromptTemplate | None = None) -> str:
    """What the user says first in round ``r``: the instructions (round 0) or feedback on round r-1."""
    if r == 0:
        return task_instructions(domain, template)
    return feedback_text(domain, picks[r - 1], choices[r - 1], template)


def user_turn(domain: Domain, option_index, picks, choices, r: int, template: PromptTemplate | None = None) -> str:
    """The user's turn that opens round ``r``: the instructions (round 0) or feedback on round r-1."""
    return f"{turn_opening(domain, picks, choices, r, template)}\n\n{round_text(domain, r, option_index[r], template)}"


def prompt_messages(domain: Domain, option_index, picks, choices, r: int, template: PromptTemplate | None = None):
    """The conversation up to and including round ``r``'s user turn (what the assistant answers)."""
    return dialogue_messages(domain, option_index, picks, choices, r, template) + [
        {"role": "user", "content": user_turn(domain, option_index, picks, choices, r, template)}
    ]


def heldout_prompt_messages(domain: Domain, history_options, picks, choices, heldout_option_index,
                            template: PromptTemplate | None = None):
    """The conversation after all observed rounds, followed by one held-out round's options."""
    k = len(choices)
    messages = dialogue_messages(domain, history_options, picks, choices, k, template)
    opening = turn_opening(domain, picks, choices, k, template)
    messages.append({"role": "user", "content": f"{opening}\n\n{round_text(domain, k, heldout_option_index, template)}"})
    return messages


# -- belief elicitation ------------------------------------------------------------------------------
# The study also asked assistants, during the dialogue, what they thought the user's preference on each
# feature was.  The scale's points (1..5) map to the feature's weight levels in ascending order
# (eval/beliefs/scale.py); the question names the feature and its lowest and highest values.
BELIEF_SCALE = default_template().fields["belief_scale"]  # the default wording (reports name the points with it)


def belief_question(domain: Domain, feature_index: int, template: PromptTemplate | None = None) -> str:
    """The question about the user's preference on one feature, e.g. "On a scale of 1 to 5, how much do I
    prefer a higher price (lowest: $100; highest: $1000)? 1: strongly prefer lower, ..."."""
    template = template or default_template()
    feature = domain.features[feature_index]
    order = sorted(range(len(feature.values)), key=lambda i: feature.normalised[i])
    points = template.fields["belief_scale"]
    scale = template.fields["belief_scale_separator"].join(
        template.fill("belief_scale_point", point=point, words=words) for point, words in enumerate(points, start=1))
    return template.fill("belief_question", feature=feature.name, lowest=feature.text(order[0]),
                         highest=feature.text(order[-1]), n_points=len(points), scale=scale,
                         answer_format=belief_answer_text(ANSWER_PLACEHOLDER, template))


def belief_answer_text(point, template: PromptTemplate | None = None) -> str:
    """The answer naming scale point ``point`` (1-based, as the user reads the scale)."""
    return (template or default_template()).fill("belief_answer", point=point)


def belief_candidate_answers(template: PromptTemplate | None = None) -> list[str]:
    """The answers to a belief question, one per scale point (what LM scoring compares)."""
    n_points = len((template or default_template()).fields["belief_scale"])
    return [belief_answer_text(point, template) for point in range(1, n_points + 1)]


def match_belief_answer(text: str, template: PromptTemplate | None = None) -> int | None:
    """The 0-based scale point named by the first belief answer in ``text`` written exactly as the template
    writes it (None when there is none or it is out of range)."""
    n_points = len((template or default_template()).fields["belief_scale"])
    return _match_number(belief_answer_text("{number}", template), text, n_points)


def belief_prompt_messages(domain: Domain, history_options, picks, choices, feature_index: int,
                           template: PromptTemplate | None = None):
    """The conversation after all observed rounds (``len(choices)`` of them), followed by the belief
    question about feature ``feature_index`` in place of the next round's options."""
    k = len(choices)
    messages = dialogue_messages(domain, history_options, picks, choices, k, template)
    opening = turn_opening(domain, picks, choices, k, template)
    messages.append({"role": "user", "content": f"{opening}\n\n{belief_question(domain, feature_index, template)}"})
    return messages


# -- the designer's prompt -----------------------------------------------------------------------------
# A designer (eval/design.py) chooses which option set to show next.  Asked as a language model, it reads
# the rounds so far with the user's choices, then several labelled candidate sets, and names one.
def design_answer_text(number, template: PromptTemplate | None = None) -> str:
    """The designer's answer naming candidate set ``number`` (1-based, or a string such as "N")."""
    return (template or default_template()).fill("design_answer", number=number)


def design_candidate_answers(n_sets: int, template: PromptTemplate | None = None) -> list[str]:
    """The designer's possible answers, one per candidate set (what LM scoring compares)."""
    return [design_answer_text(number, template) for number in range(1, n_sets + 1)]


def match_design_answer(text: str, n_sets: int, template: PromptTemplate | None = None) -> int | None:
    """The 0-based candidate set named by the first designer answer in ``text`` written exactly as the
    template writes it (None when there is none or it is out of range)."""
    return _match_number(design_answer_text("{number}", template), text, n_sets)


def design_prompt_messages(domain: Domain, history_options, history_choices, candidate_sets,
                           template: PromptTemplate | None = None):
    """One user turn: the designer's instructions, the rounds so far (options and the user's choice), the
    candidate sets (``candidate_sets``: long [K, O, F]) each under its header, and the question."""
    template = template or default_template()
    names = domain.feature_names
    features = names[-1]
    if len(names) > 1:
        features = template.fields["feature_separator"].join(names[:-1]) + template.fields["feature_last_separator"] + features
    n_sets = len(candidate_sets)
    parts = [template.fill("design_instructions", **_nouns(domain), features=features, n_options=domain.n_options,
                           n_sets=n_sets, answer_format=design_answer_text(ANSWER_PLACEHOLDER, template))]
    for r, choice in enumerate(history_choices):
        parts.append(f"{round_header(r, template)}\n{options_text(domain, history_options[r], template)}\n"
                     + template.fill("design_choice", **_nouns(domain), number=int(choice) + 1))
    sets = [f"{template.fill('design_set_header', number=k + 1)}\n{options_text(domain, options, template)}"
            for k, options in enumerate(candidate_sets)]
    parts.append("\n".join(sets) + "\n" + template.fill("design_question", **_nouns(domain),
                                                         round=len(history_choices) + 1, n_sets=n_sets))
    return [{"role": "user", "content": "\n\n".join(parts)}]
