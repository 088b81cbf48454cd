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


def round_text(domain: Domain, round_number: int, option_index_round) -> str:
    return (
        f"Round {round_number + 1}.\n{options_text(domain, option_index_round)}\n"
        f"Which {domain.noun} is best for me?"
    )


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
