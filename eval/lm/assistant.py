"""An assistant backed by a Hugging Face causal LM, playing the protocol through the dialogue text module.

Two ways to decide:

* ``score``: the probability of each option's answer ("The best option is Hotel N.") given the
  chat-formatted history, normalised over the options (``ChoiceScorer``).  The prompts of one dialogue
  after one history length form a group that shares the history (``ChoiceScorer.group_logprobs``), and the
  groups go dialogue by dialogue, history lengths in order, so that each history is encoded once;
* ``generate``: greedy decoding, then the option number is parsed from the answer's first sentence
  (``lm.answer_sentence``: a reply that continues the dialogue instead of answering names no option there);
  an answer that names no option counts as wrong and is reported (raw text kept) as a failure.

Belief elicitation (``state_beliefs``) asks the same history one question per feature
(``dialogue_text.belief_prompt_messages``): in score mode the 5 answers "My estimate is N." are scored and
normalised over the 5, in generate mode the decoded answer's N is parsed (no N: a failure).

All prompts and candidate answers come from ``template`` (a prompt template, default: the shipped one); in
generate mode an answer written exactly as the template writes it is read first, then the lenient parsers.
"""
from __future__ import annotations

import torch

from ppl_models.rng import generator

from eval.assistants import Assistant, Recommendation, RecommendRequest, pick_argmax, truncate_request
from eval.beliefs.scale import N_SCALE_POINTS, StatedBeliefs, belief_sites
from eval.text.dialogue import (
    PromptTemplate, belief_candidate_answers, belief_prompt_messages, candidate_answers,
    heldout_prompt_messages, match_answer, match_belief_answer,
)
from eval.lm.answers import answer_line, answer_sentence, parse_belief_answer, parse_option_answer
from eval.lm.loading import LoadedLM
from eval.lm.scorer import LMRole
from eval.lm.scoring import RoundRequest
from eval.student_card import check_student_domain, read_student_card


class LMAssistant(LMRole, Assistant):
    """Recommends with a causal LM (``mode`` "score" or "generate")."""

    def __init__(self, lm: LoadedLM, mode: str = "score", name: str | None = None, batch_size: int = 16,
                 template: PromptTemplate | None = None):
        super().__init__(lm, mode, name, batch_size, template)
        self.unparseable_belief_examples: list[str] = []  # the same for belief answers
        self.student_card = read_student_card(lm.model_id)  # the domain a student was built for (None: any)

    def prompts(self, request: RecommendRequest) -> list[list[dict]]:
        """One conversation per (dialogue, option set), in [D, M] order."""
        conversations = []
        for d in range(request.option_sets.shape[0]):
            for m in range(request.option_sets.shape[1]):
                conversations.append(
                    heldout_prompt_messages(
                        request.domain,
                        request.history_options[d],
                        request.history_picks[d].tolist(),
                        request.history_choices[d].tolist(),
                        request.option_sets[d, m],
                        self.template,
                    )
                )
        return conversations

    def recommend(self, request: RecommendRequest) -> Recommendation:
        if self.mode == "score":
            return self._score([request])[0]
        check_student_domain(self.student_card, request.domain, self.lm.model_id)
        n_dialogues, n_sets, n_options = request.option_sets.shape[:3]
        conversations = self.prompts(request)
        answers = self.scorer.generate(conversations)
        parsed = [_first_found(match_answer(request.domain, answer_line(a), self.template), parse_option_answer,
                               answer_sentence(a), request.domain.noun, n_options) for a in answers]
        failures = torch.tensor([p is None for p in parsed]).reshape(n_dialogues, n_sets)
        for answer, p in zip(answers, parsed):
            if p is None and len(self.unparseable_examples) < 5:
                self.unparseable_examples.append(answer)
        # An unparseable answer is counted wrong: pick -1 never equals a user's choice.
        picks = torch.tensor([-1 if p is None else p for p in parsed]).reshape(n_dialogues, n_sets)
        return Recommendation(None, picks, failures)

    def recommend_after_each_round(self, request: RecommendRequest) -> list[Recommendation]:
        """Recommendations after 0, 1, ..., r rounds of the history (in score mode, scored together: see
        ``_score``)."""
        truncated = [truncate_request(request, k) for k in range(request.n_rounds_seen + 1)]
        if self.mode != "score":
            return [self.recommend(t) for t in truncated]
        return self._score(truncated)

    def _score(self, requests: list[RecommendRequest]) -> list[Recommendation]:
        """Score-mode recommendations for requests on the same dialogues and option sets that differ in
        history length.  Every prompt of one dialogue and history length is one group, and a dialogue's
        groups follow each other, so that the scorer encodes each history once and extends it round by
        round.  Each request's ties are broken with its own seed."""
        n_dialogues, n_sets, n_options = requests[0].option_sets.shape[:3]
        check_student_domain(self.student_card, requests[0].domain, self.lm.model_id)
        candidates = candidate_answers(requests[0].domain, self.template)
        conversations = [self.prompts(r) for r in requests]  # [K][D * M]
        groups = [
            [RoundRequest(c, candidates) for c in conversations[i][d * n_sets : (d + 1) * n_sets]]
            for d in range(n_dialogues) for i in range(len(requests))
        ]
        scored = torch.stack(self.scorer.score_groups(groups)).float()  # [D * K, M, O]
        probs = scored.reshape(n_dialogues, len(requests), n_sets, n_options).transpose(0, 1)  # [K, D, M, O]
        return [
            Recommendation(probs[i], pick_argmax(probs[i], generator(r.seed, "tiebreak", self.name)))
            for i, r in enumerate(requests)
        ]

    def belief_prompts(self, request: RecommendRequest) -> list[list[dict]]:
        """One conversation per (dialogue, feature), in [D, F] order: the history, then the question."""
        n_features = len(belief_sites(request.domain))
        return [
            belief_prompt_messages(
                request.domain,
                request.history_options[d],
                request.history_picks[d].tolist(),
                request.history_choices[d].tolist(),
                f,
                self.template,
            )
            for d in range(request.history_choices.shape[0])
            for f in range(n_features)
        ]

    def state_beliefs(self, request: RecommendRequest) -> StatedBeliefs:
        return self.state_beliefs_after_each_round(request)[-1]

    def state_beliefs_after_each_round(self, request: RecommendRequest) -> list[StatedBeliefs]:
        """All history lengths' questions in one scoring (or generation) call: [(r+1) * D * F] prompts."""
        check_student_domain(self.student_card, request.domain, self.lm.model_id)
        n_dialogues, n_features = request.history_choices.shape[0], len(belief_sites(request.domain))
        n_states = request.n_rounds_seen + 1
        conversations = [c for k in range(n_states) for c in self.belief_prompts(truncate_request(request, k))]
        shape = (n_states, n_dialogues, n_features)
        if self.mode == "score":
            # One group per (dialogue, history length), a dialogue's groups in order (see recommend_after_each_round).
            candidates = belief_candidate_answers(self.template)
            groups = [
                [RoundRequest(c, candidates) for c in conversations[(k * n_dialogues + d) * n_features :][:n_features]]
                for d in range(n_dialogues) for k in range(n_states)
            ]
            scored = torch.stack(self.scorer.score_groups(groups)).double()  # [D * S, F, points]
            probs = scored.reshape(n_dialogues, n_states, n_features, N_SCALE_POINTS).transpose(0, 1)
            return [StatedBeliefs(probs[k]) for k in range(n_states)]
        answers = self.scorer.generate(conversations)
        parsed = [_first_found(match_belief_answer(answer_line(a), self.template), parse_belief_answer,
                               answer_sentence(a), N_SCALE_POINTS) for a in answers]
        for answer, p in zip(answers, parsed):
            if p is None and len(self.unparseable_belief_examples) < 5:
                self.unparseable_belief_examples.append(answer)
        points = torch.tensor([-1 if p is None else p for p in parsed]).reshape(shape)
        return [StatedBeliefs.from_points(points[k], distribution=False) for k in range(n_states)]


def _first_found(matched, parser, *args):
    """``matched`` (an answer read as the template writes it) unless None, else ``parser(*args)``."""
    return matched if matched is not None else parser(*args)
