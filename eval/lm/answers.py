"""Reading a generated reply: where its answer stands, and which option or scale point it names."""
from __future__ import annotations

import re


def answer_line(text: str) -> str:
    """The first non-empty line of a generated reply (stripped): where its answer must stand."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def answer_sentence(text: str) -> str:
    """The part of a generated reply that is its answer: the first non-empty line, up to the end of its
    first sentence (a full stop, "!" or "?" followed by a space).  A reply that goes on to play the
    dialogue ("Round 2.\nFlight 1: ...") is thus judged by "Round 2." alone, and names no option."""
    return re.split(r"(?<=[.!?])\s", answer_line(text), maxsplit=1)[0]


def parse_option_answer(text: str, noun: str, n_options: int) -> int | None:
    """The 0-based option an answer names, or None if it names none or one out of range.

    Accepts "The best option is Flight 2.", "Flight 2", "option 2" (any case), or a reply that starts with
    the bare number ("2", the embedded student's answer format).  The canonical phrase "best option is ..."
    wins; otherwise the first "<noun> N" or "option N" mention counts; then a leading number.
    """
    noun_pattern = r"\s+".join(re.escape(word) for word in noun.split())
    mention = rf"(?:{noun_pattern}|option)\s*#?\s*(\d+)"
    found = re.search(rf"best\s+option\s+is\s*:?\s*(?:{noun_pattern}\s*#?\s*)?(\d+)", text, re.IGNORECASE)
    found = found or re.search(rf"\b{mention}\b", text, re.IGNORECASE)
    found = found or re.match(r"\s*(\d+)(?![\d,:/]|\.\d)", text)  # not "2.5 stars", "10:00", "3/5"
    if found is None:
        return None
    number = int(found.group(1))
    return number - 1 if 1 <= number <= n_options else None


def parse_belief_answer(text: str, n_points: int = 5) -> int | None:
    """The 0-based scale point a belief answer names, or None if it names none or one out of range.

    Accepts "My estimate is 4.", "estimate: 4", "4/5", "4 out of 5", or a bare "4" (any case).  The
    canonical "estimate is N" wins; otherwise the first "N/5" or "N out of 5", then a reply that is only
    a number.
    """
    found = re.search(r"estimate\s*(?:is|:)\s*:?\s*(\d+)", text, re.IGNORECASE)
    found = found or re.search(rf"\b(\d+)\s*(?:/|out\s+of)\s*{n_points}\b", text, re.IGNORECASE)
    found = found or re.fullmatch(r"\s*(\d+)\s*[.!]?\s*", text)
    if found is None:
        return None
    number = int(found.group(1))
    return number - 1 if 1 <= number <= n_points else None
