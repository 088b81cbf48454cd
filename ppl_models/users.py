"""Simulated users: a user is one preference hypothesis of the domain's prior (for flight, one of the 624
weight vectors), and chooses through the domain's choice rule."""
from __future__ import annotations

from dataclasses import dataclass

import pyro.poutine as poutine
import torch

from .domain import CHOICE_SITE, Domain, user_model
from .errors import BayesTeachError
from .hypotheses import hypothesis_space
from .rng import generator


def all_users(domain: Domain) -> torch.Tensor:
    """Every hypothesis with positive prior probability, long [n_users] (624 for flight)."""
    return hypothesis_space(domain).support


def pick_users(domain: Domain, n_users: int | None, seed: int) -> torch.Tensor:
    """``n_users`` distinct users drawn at random from the prior's support (if None: the domain's
    ``default_users``, or all of them)."""
    support = all_users(domain)
    n_users = domain.default_users if n_users is None else n_users
    if n_users is None or n_users >= len(support):
        return support
    if n_users < 1:
        raise BayesTeachError(f"n_users must be at least 1, got {n_users}")
    order = torch.randperm(len(support), generator=generator(seed, "users"))
    return support[order[:n_users].sort().values]


def user_preferences(domain: Domain, users: torch.Tensor) -> dict:
    """The latent site values of each user: site -> long [n]."""
    space = hypothesis_space(domain)
    return {site: values[users] for site, values in space.site_values.items()}


def describe_user(domain: Domain, user: int) -> dict:
    """A user's preferences in words: site -> label (e.g. {"weight[price]": -1.0})."""
    values = user_preferences(domain, torch.tensor([user]))
    labels = domain.site_labels
    return {site: (labels[site][int(v)] if site in labels else int(v)) for site, v in values.items()}


def user_choice_log_probs(domain: Domain, users: torch.Tensor, option_index: torch.Tensor) -> torch.Tensor:
    """log p(user picks each option), for each user's own option sets.

    ``users``: long [D]; ``option_index``: long [D, M, O, F].  Returns [D, M, O].  The user model is
    conditioned on each user's latent values (Pyro's ``condition``), so this is the same generative program
    that inference inverts.
    """
    n_dialogues, n_sets = option_index.shape[:2]
    data = {site: values.reshape(n_dialogues, 1) for site, values in user_preferences(domain, users).items()}
    dummy = torch.zeros(n_dialogues, n_sets, dtype=torch.long)
    trace = poutine.trace(poutine.condition(user_model, data)).get_trace(domain, option_index, dummy)
    log_probs = trace.nodes[CHOICE_SITE]["fn"].log_probs()
    return log_probs.expand(n_dialogues, n_sets, domain.n_options)


def simulate_choices(domain: Domain, users: torch.Tensor, option_index: torch.Tensor, gen: torch.Generator):
    """Each user's choice in each of their option sets, drawn with ``gen``: long [D, M]."""
    probs = user_choice_log_probs(domain, users, option_index).exp()
    flat = torch.multinomial(probs.reshape(-1, domain.n_options), 1, generator=gen)
    return flat.reshape(option_index.shape[:2])


@dataclass
class Dialogues:
    """A batch of simulated dialogues (options and the users' choices; no assistant yet)."""

    users: torch.Tensor  # long [N]: the hypothesis index of each dialogue's user
    option_index: torch.Tensor  # long [N, R, O, F]
    choices: torch.Tensor  # long [N, R]

    def __len__(self):
        return len(self.users)


def simulate_dialogues(domain: Domain, users: torch.Tensor, n_dialogues: int, seed: int, stream="dialogues"):
    """``n_dialogues`` dialogues of ``domain.n_rounds`` rounds for each user (user-major order),
    deterministic given ``seed``."""
    users = users.repeat_interleave(n_dialogues)
    option_index = domain.draw_options(generator(seed, stream, "options"), (len(users), domain.n_rounds))
    choices = simulate_choices(domain, users, option_index, generator(seed, stream, "choices"))
    return Dialogues(users, option_index, choices)
