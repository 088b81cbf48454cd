"""Belief elicitation: what a stated belief is (a distribution over the 5-point scale per feature) and how
stated beliefs compare with the exact Bayesian posterior.  The protocol plays recommendations; the caller
then elicits beliefs on its run: ``run.beliefs = elicit_beliefs(run, assistant)``.
"""

from eval.beliefs.scale import BeliefElicitationError, StatedBeliefs, belief_levels, belief_sites, is_elicitable
from eval.beliefs.elicitation import BeliefRun, belief_report, elicit_beliefs, per_user_belief_metrics, plot_beliefs

__all__ = ["BeliefElicitationError", "BeliefRun", "StatedBeliefs", "belief_levels", "belief_report", "belief_sites", "elicit_beliefs", "is_elicitable", "per_user_belief_metrics", "plot_beliefs"]
