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

    ``weights[f]`` broadcasts against the plates (``[..., n_dialogues, 1]``, enumerated dimensions to the
    left); ``options.value`` is ``[n_dialogues, n_rounds, n_options, n_features]``.  Summing feature by
    feature lets the enumerated dimensions grow one at a time instead of materialising a
    ``[..., n_features]`` product.

    The result is a permuted view of a tensor stored option-major with the enumerated (hypothesis)
    dimensions innermost, ``[n_options, n_dialogues, n_rounds, enum...]``: each option's utilities are one
    contiguous block, so the choice rule's reductions over the options run as elementwise operations across
    blocks, and its per-round likelihood comes out with the hypotheses contiguous for each dialogue and
    round, the layout of the posterior ``infer`` writes, so no transpose is needed.  The values are the same
    in any layout (the same sums in the same order).
    """
    values = options.value
    n_plates = values.dim() - 2  # [*plates, n_options, n_features]
    n_batch = max([weight.dim() for weight in weights] + [n_plates])
    n_enum = n_batch - n_plates
    # each feature's values as [n_options, *plates, 1 (x n_enum)]
    values = values.movedim(-2, 0).reshape(values.shape[-2:-1] + values.shape[:-2] + (1,) * n_enum + values.shape[-1:])
    utility = 0.0
    for f, weight in enumerate(weights):
        weight = torch.as_tensor(weight)
        weight = weight.reshape((1,) * (n_batch - weight.dim()) + tuple(weight.shape))  # [*enum, *plates]
        weight = weight.permute(tuple(range(n_enum, n_batch)) + tuple(range(n_enum)))  # [*plates, *enum]
        utility = utility + weight * values[..., f]  # [n_options, *plates, *enum]
    # [n_options, *plates, *enum] -> [*enum, *plates, n_options], a view
    order = tuple(range(1 + n_plates, 1 + n_batch)) + tuple(range(1, 1 + n_plates)) + (0,)
    return utility.permute(order)


def linear_domain_parts(features, levels=WEIGHT_LEVELS):
    """The keyword arguments a linear domain passes to ``Domain``: prior, utility and site labels."""
    names = [f.name for f in features]
    return dict(
        preference_model=linear_weight_prior(names, levels),
        utility=linear_utility,
        feature_sites={name: weight_site(name) for name in names},
        site_labels={weight_site(name): tuple(levels) for name in names},
    )
