"""How a recommendation dialogue reads to a language model: the single source of every prompt.

Teaching data (distill/) and evaluation prompts (eval/) are both built here, so they cannot drift apart.
Nouns, feature names and value formats all come from the domain declaration, so a new domain needs no new
prompt code.  A dialogue reads::

    user:      <task explanation>  Round 1. Flight 1: departure time: 10:48 AM, ... / Flight 2: ... / Flight 3: ...
    assistant: The best option is Flight 2.
    user:      Not quite: I prefer Flight 3.  Round 2. ...
    assistant: The best option is Flight 1.
    ...
"""
from __future__ import annotations

from typing import Sequence

from ppl_models import Domain


def noun_title(domain: Domain) -> str:
    return domain.noun[:1].upper() + domain.noun[1:]


def task_instructions(domain: Domain) -> str:
    """The first user turn's explanation of the task (the study's protocol, in our own words)."""
    features = ", ".join(domain.feature_names[:-1]) + f" and {domain.feature_names[-1]}"
    return (
        f"Help me choose a {domain.noun}. I have fixed preferences about {features}, and they do not change. "
        f"In each round I will show you {domain.n_options} {domain.noun}s; recommend the one I will like best. "
        "You don't know my preferences, so work them out from the choices I make as we go. "
        "When you are unsure, use your best judgment: do not ask me for more information. "
        f'Answer with "The best option is {noun_title(domain)} N."'
    )


def options_text(domain: Domain, option_index_round) -> str:
    """The options of one round, one line each: "Flight 1: departure time: 10:48 AM, ..."."""
    return "\n".join(
        f"{noun_title(domain)} {i + 1}: {domain.option_text(row)}" for i, row in enumerate(option_index_round.tolist())
    )


def question_text(domain: Domain) -> str:
    """The question that closes every round: "Which hotel is best for me?"."""
    return f"Which {domain.noun} is best for me?"


def round_text(domain: Domain, round_number: int, option_index_round) -> str:
    return f"Round {round_number + 1}.\n{options_text(domain, option_index_round)}\n{question_text(domain)}"


def answer_text(domain: Domain, pick: int) -> str:
    """The assistant's answer naming option ``pick`` (0-based; a negative pick is an answer that named no
    option, as an LM's unparseable reply in generate mode)."""
    if int(pick) < 0:
        return "I am not sure which one is best."
    return f"The best option is {noun_title(domain)} {int(pick) + 1}."


def candidate_answers(domain: Domain) -> list[str]:
    """The answers an assistant can give in a round, one per option (what LM scoring compares)."""
    return [answer_text(domain, o) for o in range(domain.n_options)]


def feedback_text(domain: Domain, pick: int, choice: int) -> str:
    """The user's reply after the assistant recommended ``pick`` and the user prefers ``choice``."""
    if int(pick) < 0:
        return f"I prefer {noun_title(domain)} {int(choice) + 1}."
    if int(pick) == int(choice):
        return f"That's right: I prefer {noun_title(domain)} {int(choice) + 1}."
    return f"Not quite: I prefer {noun_title(domain)} {int(choice) + 1}."


def dialogue_messages(domain: Domain, option_index, picks: Sequence[int], choices: Sequence[int], n_rounds: int | None = None):
    """Chat messages of a dialogue through the assistant's answer in round ``n_rounds`` (default: all).

    ``option_index``: long [R, O, F]; ``picks``: the assistant's pick per round; ``choices``: the user's.
    The result ends with an assistant message: one teaching example per prefix length.
    """
    n_rounds = len(picks) if n_rounds is None else n_rounds
    messages = []
    for r in range(n_rounds):
        messages.append({"role": "user", "content": user_turn(domain, option_index, picks, choices, r)})
        messages.append({"role": "assistant", "content": answer_text(domain, picks[r])})
    return messages


def user_turn(domain: Domain, option_index, picks, choices, r: int) -> str:
    """The user's turn that opens round ``r``: the instructions (round 0) or feedback on round r-1."""
    opening = task_instructions(domain) if r == 0 else feedback_text(domain, picks[r - 1], choices[r - 1])
    return f"{opening}\n\n{round_text(domain, r, option_index[r])}"


def prompt_messages(domain: Domain, option_index, picks, choices, r: int):
    """The conversation up to and including round ``r``'s user turn (what the assistant answers)."""
    return dialogue_messages(domain, option_index, picks, choices, r) + [
        {"role": "user", "content": user_turn(domain, option_index, picks, choices, r)}
    ]


def heldout_prompt_messages(domain: Domain, history_options, picks, choices, heldout_option_index):
    """The conversation after all observed rounds, followed by one held-out round's options."""
    k = len(choices)
    messages = dialogue_messages(domain, history_options, picks, choices, k)
    opening = task_instructions(domain) if k == 0 else feedback_text(domain, picks[k - 1], choices[k - 1])
    messages.append({"role": "user", "content": f"{opening}\n\n{round_text(domain, k, heldout_option_index)}"})
    return messages


# -- belief elicitation ------------------------------------------------------------------------------
# The study also asked assistants, during the dialogue, what they thought the user's preference on each
# feature was.  The scale's points (1..5) map to the feature's weight levels in ascending order
# (eval/belief_scale.py); the question names the feature and its lowest and highest values.
BELIEF_SCALE = (
    "strongly prefer lower",
    "somewhat prefer lower",
    "indifferent",
    "somewhat prefer higher",
    "strongly prefer higher",
)


def belief_question(domain: Domain, feature_index: int) -> str:
    """The question about the user's preference on one feature, e.g. "On a scale of 1 to 5, how much do I
    prefer a higher price (lowest: $100; highest: $1000)? 1: strongly prefer lower, ..."."""
    feature = domain.features[feature_index]
    order = sorted(range(len(feature.values)), key=lambda i: feature.normalised[i])
    scale = ", ".join(f"{point}: {words}" for point, words in enumerate(BELIEF_SCALE, start=1))
    return (
        "Before we go on, tell me what you have worked out about my preferences so far. "
        f"On a scale of 1 to {len(BELIEF_SCALE)}, how much do I prefer a higher {feature.name} "
        f"(lowest: {feature.text(order[0])}; highest: {feature.text(order[-1])})? {scale}. "
        f'Answer with "{belief_answer_text("N")}"'
    )


def belief_answer_text(point) -> str:
    """The answer naming scale point ``point`` (1-based, as the user reads the scale)."""
    return f"My estimate is {point}."


def belief_candidate_answers() -> list[str]:
    """The answers to a belief question, one per scale point (what LM scoring compares)."""
    return [belief_answer_text(point) for point in range(1, len(BELIEF_SCALE) + 1)]


def belief_prompt_messages(domain: Domain, history_options, picks, choices, feature_index: int):
    """The conversation after all observed rounds (``len(choices)`` of them), followed by the belief
    question about feature ``feature_index`` in place of the next round's options."""
    k = len(choices)
    messages = dialogue_messages(domain, history_options, picks, choices, k)
    opening = task_instructions(domain) if k == 0 else feedback_text(domain, picks[k - 1], choices[k - 1])
    messages.append({"role": "user", "content": f"{opening}\n\n{belief_question(domain, feature_index)}"})
    return messages
