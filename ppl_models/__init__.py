"""The world: recommendation domains as Pyro programs, exact inference over them, simulated users."""
from .domain import Domain, DomainError, Feature, Options, user_model
from .design import current_posterior, expected_information_gain
from .errors import BayesTeachError
from .inference import ImpossibleChoiceError, PosteriorResult, infer, predict
from .hypotheses import HypothesisSpace, hypothesis_space
from .registry import UnknownDomainError, domain_names, get_domain
from .users import Dialogues, all_users, pick_users, simulate_choices, simulate_dialogues, user_choice_log_probs

__all__ = [
    "BayesTeachError", "Domain", "DomainError", "Feature", "Options", "user_model", "ImpossibleChoiceError",
    "PosteriorResult", "infer", "predict", "HypothesisSpace", "hypothesis_space", "UnknownDomainError", "domain_names",
    "get_domain", "Dialogues", "all_users", "pick_users", "simulate_choices", "simulate_dialogues",
    "user_choice_log_probs", "current_posterior", "expected_information_gain",
]
