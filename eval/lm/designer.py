"""A language model as designer: shown the rounds so far and a few labelled candidate option sets, it names
the set to show next (``eval.design`` plays the dialogues and scores its choices by exact information gain).

* ``score``: the probability of each answer "Show me set K." given the prompt, normalised over the sets; the
  most probable set is shown (ties broken at random, seeded);
* ``generate``: greedy decoding; the set is read from the answer as the template writes it, else from a
  "set K" mention in its first sentence.  An answer that names no set is a failure: a set is then drawn at
  random (seeded), so the dialogue goes on, and the failure is counted.

The prompt (``eval.text.dialogue.design_prompt_messages``) and the answers come from the prompt template.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch


from eval.lm.answers import answer_sentence
from eval.lm.scorer import LMRole
from eval.lm.scoring import RoundRequest
from eval.records import pick_argmax
from eval.text.dialogue import (
    design_candidate_answers, design_prompt_messages, match_design_answer,
)


@dataclass
class DesignChoice:
    """A designer's choice among K candidate sets for each of N dialogues."""

    picks: torch.Tensor  # long [N]
    probs: torch.Tensor | None = None  # [N, K]: score mode's distribution over the sets
    failures: torch.Tensor | None = None  # bool [N]: answers that named no set (a random set was shown)


def parse_set_answer(text: str, n_sets: int) -> int | None:
    """The 0-based set a free-text answer names ("set 3", "Set #3"), or None (none, or out of range)."""
    found = re.search(r"\bset\s*#?\s*(\d+)\b", text, re.IGNORECASE)
    if found is None:
        return None
    number = int(found.group(1))
    return number - 1 if 1 <= number <= n_sets else None


class LMDesigner(LMRole):
    """Chooses the next option set with a causal LM (``mode`` "score" or "generate")."""

    def prompts(self, domain, history_options, history_choices, candidates) -> list[list[dict]]:
        """One conversation per dialogue: ``candidates`` long [N, K, O, F]."""
        return [design_prompt_messages(domain, history_options[d], history_choices[d].tolist(), candidates[d],
                                       self.template) for d in range(candidates.shape[0])]

    def choose(self, domain, history_options, history_choices, candidates, gen: torch.Generator) -> DesignChoice:
        n_dialogues, n_sets = candidates.shape[:2]
        conversations = self.prompts(domain, history_options, history_choices, candidates)
        if self.mode == "score":
            answers = design_candidate_answers(n_sets, self.template)
            scored = self.scorer.score_groups([[RoundRequest(c, answers)] for c in conversations])
            probs = torch.cat(scored).float()  # [N, K]
            return DesignChoice(pick_argmax(probs, gen), probs)
        replies = self.scorer.generate(conversations)
        parsed = []
        for reply in replies:
            found = match_design_answer(reply, n_sets, self.template)
            found = found if found is not None else parse_set_answer(answer_sentence(reply), n_sets)
            if found is None and len(self.unparseable_examples) < 5:
                self.unparseable_examples.append(reply)
            parsed.append(found)
        failures = torch.tensor([p is None for p in parsed])
        fallback = torch.randint(n_sets, (n_dialogues,), generator=gen)
        picks = torch.tensor([-1 if p is None else p for p in parsed])
        return DesignChoice(torch.where(failures, fallback, picks), None, failures)
