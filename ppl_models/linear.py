"""Building blocks for domains whose users weigh features linearly (flight, hotel).

A user holds one weight per feature from ``WEIGHT_LEVELS``; the all-zero user (indifferent to everything)
is excluded by a ``pyro.factor``; the user's utility for an option is ``weights . normalised features``.
"""
from __future__ import annotations

import functools
import math

import pyro
import pyro.distributions as dist
import torch

WEIGHT_LEVELS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def weight_site(feature_name: str) -> str:
    """The latent site holding the user's weight on a feature."""
    return f"weight[{feature_name}]"


def linear_weight_prior(feature_names, levels=WEIGHT_LEVELS, exclude_indifferent: bool = True):
    """A Pyro program sampling one weight per feature, uniform over ``levels``.

    Each weight is an enumerable ``Categorical`` site ``weight[<feature>]`` whose value is an index into
    ``levels``; under parallel enumeration every site gets its own dimension, so the program returns a
    list of weight tensors, each shaped ``[len(levels), 1, ..., 1]`` along its own dimension (or the plate
    shape when sampled).  With ``exclude_indifferent`` the all-zero weight vector gets probability 0.
    """
    level_values = torch.tensor(levels, dtype=torch.float32)
    feature_names = tuple(feature_names)

    def preference_model():
        weights = []
        for name in feature_names:
            level = pyro.sample(weight_site(name), dist.Categorical(logits=torch.zeros(len(levels))))
            weights.append(level_values[level])
        if exclude_indifferent:
            indifferent = functools.reduce(torch.logical_and, [w == 0 for w in weights])
            pyro.factor("exclude_indifferent", torch.where(indifferent, -math.inf, 0.0))
        return weights

    return preference_model


def linear_utility(weights, options) -> torch.Tensor:
    """``sum_f weight_f * value_f`` for every option: ``[..., n_options]``.

    ``weights[f]`` broadcasts against the plates (``[..., n_dialogues, 1]``); ``options.value`` is
    ``[n_dialogues, n_rounds, n_options, n_features]``.  Summing feature by feature lets the enumerated
    dimensions grow one at a time instead of materialising a ``[..., n_features]`` product.

    The result is stored option-major (each option's utilities contiguous, the ``[..., n_options]`` tensor
    a permuted view): the choice rule's reductions over the options then run as elementwise operations
    across contiguous blocks, several times faster under enumeration than over a trailing dimension of 3.
    The values are the same either way (the same sums in the same order).
    """
    values = options.value.movedim(-1, 0).movedim(-1, 1).contiguous()  # [F, O, ..., D, R]: a small copy
    n_batch = max([weight.dim() for weight in weights] + [values.dim() - 2])
    values = values.reshape(values.shape[:2] + (1,) * (n_batch + 2 - values.dim()) + values.shape[2:])
    utility = 0.0
    for weight, value in zip(weights, values):
        utility = utility + weight * value  # [O, ..., D, R]
    return utility.movedim(0, -1)  # [..., D, R, O]


def linear_domain_parts(features, levels=WEIGHT_LEVELS):
    """The keyword arguments a linear domain passes to ``Domain``: prior, utility and site labels."""
    names = [f.name for f in features]
    return dict(
        preference_model=linear_weight_prior(names, levels),
        utility=linear_utility,
        feature_sites={name: weight_site(name) for name in names},
        site_labels={weight_site(name): tuple(levels) for name in names},
    )
