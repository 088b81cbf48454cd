"""Assistants: anything that, given a dialogue so far and new option sets, recommends an option.

Every assistant (Bayesian, oracle, random, cheapest, a Hugging Face LM) meets the protocol through one small
request record, ``RecommendRequest``, and answers with a ``Recommendation`` (a probability over the options
where the assistant has one, and a pick).  All tensors are batched over dialogues.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ppl_models import Domain, infer, predict, user_choice_log_probs
from ppl_models.rng import generator


@dataclass
class RecommendRequest:
    """What an assistant sees: ``D`` dialogues with ``r`` rounds played, and ``M`` new option sets each."""

    domain: Domain
    history_options: torch.Tensor  # long [D, r, O, F]
    history_picks: torch.Tensor  # long [D, r]: the assistant's own earlier picks
    history_choices: torch.Tensor  # long [D, r]: the user's choices (revealed after each round)
    option_sets: torch.Tensor  # long [D, M, O, F]: the option sets to recommend on
    seed: int = 0  # for seeded tie-breaking
    users: torch.Tensor | None = None  # long [D]: privileged, read only by the oracle

    @property
    def n_rounds_seen(self) -> int:
        return int(self.history_choices.shape[1])


@dataclass
class Recommendation:
    probs: torch.Tensor | None  # [D, M, O]: the assistant's probability over options (None if it has none)
    picks: torch.Tensor  # long [D, M]
    failures: torch.Tensor | None = None  # bool [D, M]: answers that named no option (counted wrong)


def pick_argmax(probs: torch.Tensor, gen: torch.Generator, tolerance: float = 1e-9) -> torch.Tensor:
    """The most probable option, ties broken uniformly at random with ``gen``: long [...]."""
    noise = torch.rand(probs.shape, generator=gen)
    is_best = probs >= probs.amax(-1, keepdim=True) - tolerance
    return torch.where(is_best, noise, -1.0).argmax(-1)


class Assistant:
    """Base class.  ``recommend`` is the interface; ``recommend_after_each_round`` may be overridden for
    assistants that can score all history lengths at once (the Bayesian assistant does)."""

    name = "assistant"

    def recommend(self, request: RecommendRequest) -> Recommendation:
        raise NotImplementedError

    def recommend_after_each_round(self, request: RecommendRequest) -> list[Recommendation]:
        """Recommendations on ``request.option_sets`` after 0, 1, ..., r rounds of the history."""
        out = []
        for k in range(request.n_rounds_seen + 1):
            out.append(self.recommend(_truncate(request, k)))
        return out


def _truncate(request: RecommendRequest, k: int) -> RecommendRequest:
    return RecommendRequest(
        request.domain,
        request.history_options[:, :k],
        request.history_picks[:, :k],
        request.history_choices[:, :k],
        request.option_sets,
        request.seed * 1000 + k,
        request.users,
    )


class BayesianAssistant(Assistant):
    """Recommends the option with the highest posterior predictive probability under exact inference.

    ``model_domain`` is the assistant's model of the user (default: the request's domain); it may differ
    from the simulated users' (e.g. a noise-tolerant assistant for noisy users)."""

    name = "bayesian"

    def __init__(self, model_domain: Domain | None = None):
        self.model_domain = model_domain

    def _probs_after_each_round(self, request: RecommendRequest) -> torch.Tensor:
        domain = self.model_domain or request.domain
        posterior = infer(domain, request.history_options, request.history_choices, marginals=False)
        return predict(domain, posterior.log_posterior, request.option_sets)  # [D, r+1, M, O]

    def recommend(self, request: RecommendRequest) -> Recommendation:
        probs = self._probs_after_each_round(request)[:, -1]
        return Recommendation(probs, pick_argmax(probs, generator(request.seed, "tiebreak", self.name)))

    def recommend_after_each_round(self, request: RecommendRequest) -> list[Recommendation]:
        probs = self._probs_after_each_round(request)
        return [
            Recommendation(probs[:, k], pick_argmax(probs[:, k], generator(request.seed * 1000 + k, "tiebreak", self.name)))
            for k in range(probs.shape[1])
        ]


class OracleAssistant(Assistant):
    """Knows each user's true preferences: recommends the user's own most likely choice."""

    name = "oracle"

    def recommend(self, request: RecommendRequest) -> Recommendation:
        if request.users is None:
            raise ValueError("the oracle assistant needs the users' identities (request.users)")
        probs = user_choice_log_probs(request.domain, request.users, request.option_sets).exp()
        return Recommendation(probs, pick_argmax(probs, generator(request.seed, "tiebreak", self.name)))


class RandomAssistant(Assistant):
    """Picks uniformly at random."""

    name = "random"

    def recommend(self, request: RecommendRequest) -> Recommendation:
        n_dialogues, n_sets, n_options = request.option_sets.shape[:3]
        probs = torch.full((n_dialogues, n_sets, n_options), 1.0 / n_options)
        return Recommendation(probs, pick_argmax(probs, generator(request.seed, "tiebreak", self.name)))


class CheapestAssistant(Assistant):
    """The study's heuristic: always recommend the cheapest option (ties split evenly)."""

    name = "cheapest"

    def recommend(self, request: RecommendRequest) -> Recommendation:
        domain = request.domain
        if domain.price_feature is None:
            raise ValueError(f"domain {domain.name!r} has no price feature, so 'cheapest' is undefined")
        column = domain.feature_names.index(domain.price_feature)
        prices = torch.tensor(domain.features[column].normalised)[request.option_sets[..., column]]  # [D, M, O]
        is_cheapest = prices <= prices.amin(-1, keepdim=True) + 1e-9
        probs = is_cheapest.float() / is_cheapest.sum(-1, keepdim=True)
        return Recommendation(probs, pick_argmax(probs, generator(request.seed, "tiebreak", self.name)))


BUILTIN_ASSISTANTS = {
    "bayesian": BayesianAssistant,
    "oracle": OracleAssistant,
    "random": RandomAssistant,
    "cheapest": CheapestAssistant,
}


def make_assistant(name: str) -> Assistant:
    if name not in BUILTIN_ASSISTANTS:
        raise ValueError(f"unknown assistant {name!r}; choose from {', '.join(BUILTIN_ASSISTANTS)}")
    return BUILTIN_ASSISTANTS[name]()
