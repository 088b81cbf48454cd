"""A language model as designer: it chooses which of a few candidate option sets to show next (``eval.design``
plays the dialogues and scores its choices by exact information gain).  Two designers:

``LMDesigner`` (rule "label") is shown the rounds so far and the candidates as labelled sets, and names one:

* ``score``: the probability of each answer "Show me set K." given the prompt, normalised over the sets; the
  most probable set is shown (ties broken at random, seeded);
* ``generate``: greedy decoding; the set is read from the answer as the template writes it, else from a
  "set K" mention in its first sentence.  An answer that names no set is a failure: a set is then drawn at
  random (seeded), so the dialogue goes on, and the failure is counted.

The prompt (``eval.text.dialogue.design_prompt_messages``) and the answers come from the prompt template.

``EntropyDesigner`` (rule "entropy") asks the LM, for each candidate set, the recommendation question of the
study's protocol (the rounds so far, then that set), and shows the set whose answer distribution has the highest
entropy: the set the LM is least sure how the user will choose.  For a user who chooses deterministically
the information gain of a set is exactly the entropy of the posterior predictive over its options, so an LM
whose predictive matches the Bayesian assistant's designs as the Bayesian designer does; a student is taught
that predictive (soft Bayesian teaching) instead of the designer's pick.  The rounds so far are shown with the
LM's own earlier recommendations, as a recommending LM sees its dialogue.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch


from eval.lm.answers import answer_sentence
from eval.lm.scorer import LMRole
from eval.lm.scoring import RoundRequest
from eval.records import RecommendRequest, pick_argmax
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


DESIGNER_RULES = ("label", "entropy")  # LMDesigner names a labelled set; EntropyDesigner reads its own predictive


class EntropyDesigner:
    """Shows the candidate set on which ``assistant`` (an ``eval.lm.assistant.LMAssistant`` in score mode) is
    least sure of the user's choice: the highest entropy of its distribution over the set's options."""

    def __init__(self, assistant, name: str | None = None):
        if assistant.mode != "score":
            raise ValueError("the entropy designer reads the LM's probabilities: it needs score mode")
        self.assistant = assistant
        self.name = name or f"{assistant.name} by entropy"
        self._memo = None  # (history options, history choices, own picks) of the previous call

    def own_picks(self, domain, history_options: torch.Tensor, history_choices: torch.Tensor) -> torch.Tensor:
        """The LM's own recommendation in each round so far, given the rounds before it: long [N, r].  A
        dialogue played round by round extends the previous call's rounds, which are then reused."""
        n_rounds = history_choices.shape[1]
        picks = torch.empty_like(history_choices)
        start = 0
        if self._memo is not None:
            options, choices, known = self._memo
            k = min(known.shape[1], n_rounds)
            if (options.shape[0] == history_options.shape[0] and torch.equal(options[:, :k], history_options[:, :k])
                    and torch.equal(choices[:, :k], history_choices[:, :k])):
                picks[:, :k], start = known[:, :k], k
        for r in range(start, n_rounds):
            request = RecommendRequest(domain, history_options[:, :r], picks[:, :r], history_choices[:, :r],
                                       history_options[:, r : r + 1], seed=r)
            picks[:, r] = self.assistant.recommend(request).picks[:, 0]
        self._memo = (history_options.clone(), history_choices.clone(), picks.clone())
        return picks

    def choose(self, domain, history_options, history_choices, candidates, gen: torch.Generator) -> DesignChoice:
        picks = self.own_picks(domain, history_options, history_choices)
        request = RecommendRequest(domain, history_options, picks, history_choices, candidates, seed=len(picks[0]))
        probs = self.assistant.recommend(request).probs.double()  # [N, K, O]
        entropy = -(probs * probs.clamp_min(1e-300).log()).sum(-1)  # [N, K] nats
        return DesignChoice(pick_argmax(entropy, gen))
