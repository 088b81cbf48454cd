"""Play the protocol on many users: in chunks, over processes, resumably.

``play_users`` cuts the users (all simulated first, so that they are the same whatever the number of
processes) into chunks, gives each process an even share of the chunks not yet finished, and plays each
chunk with ``run_protocol`` (and belief elicitation) inside ``user_rows``, so that ties are broken as in
one batch of all users.  A finished chunk goes to its file (``ChunkStore``); when every process is done,
rank 0 reads all chunks back and returns the whole ``EvaluationRun`` (the other ranks get None).  The run
is the one a single process playing all users at once would make: the same users, sets, picks, and
probabilities up to the floating-point effect of batching different users together.
"""
from __future__ import annotations

import time

import torch

from ppl_models import Domain

from eval.beliefs import elicit_beliefs as elicit
from eval.beliefs.elicitation import BeliefRun
from eval.protocol import run_protocol, simulate_protocol_data
from eval.records import EvaluationRun, ProtocolData, user_rows
from eval.runner.launch import Launch, split_evenly
from eval.runner.progress import ProgressMeter
from eval.runner.store import ChunkStore

RUN_FIELDS = ("users", "dialogue_picks", "picks", "probs", "failures", "reference_probs", "reference_picks")
BELIEF_FIELDS = ("levels", "stated_probs", "failures", "posterior_probs", "implied_picks")
POLL_INTERVAL_S = 1.0


def slice_data(data: ProtocolData, start: int, stop: int) -> ProtocolData:
    return ProtocolData(data.users[start:stop], data.dialogue_options[start:stop], data.dialogue_choices[start:stop],
                        data.heldout_options[start:stop], data.heldout_choices[start:stop])


def run_payload(run: EvaluationRun) -> dict:
    """What a chunk file keeps of a chunk's run: the assistant's outputs (the data is simulated again)."""
    payload = {"run": {name: getattr(run, name) for name in RUN_FIELDS}, "beliefs": None}
    if run.beliefs is not None:
        payload["beliefs"] = {name: getattr(run.beliefs, name) for name in BELIEF_FIELDS}
        payload["beliefs"]["distribution"] = bool(run.beliefs.distribution)
    return payload


def _cat(parts: list):
    return None if any(p is None for p in parts) else torch.cat(parts)


def assemble(domain: Domain, user_domain: Domain, assistant_name: str, seed: int, data: ProtocolData,
             payloads: list[dict]) -> EvaluationRun:
    """The whole run from its chunks' payloads (in user order)."""
    runs = [p["run"] for p in payloads]
    fields = {name: _cat([r[name] for r in runs]) for name in RUN_FIELDS}
    if not torch.equal(fields["users"], data.users):
        raise ValueError("the chunks' users are not the evaluation's users")
    run = EvaluationRun(domain, assistant_name, seed, data.users, data.dialogue_options, data.dialogue_choices,
                        fields["dialogue_picks"], data.heldout_options, data.heldout_choices, fields["picks"],
                        fields["probs"], fields["failures"], fields["reference_probs"], fields["reference_picks"],
                        user_domain)
    beliefs = [p["beliefs"] for p in payloads]
    if all(b is not None for b in beliefs) and beliefs:
        run.beliefs = BeliefRun(beliefs[0]["levels"], _cat([b["stated_probs"] for b in beliefs]),
                                _cat([b["failures"] for b in beliefs]), all(b["distribution"] for b in beliefs),
                                _cat([b["posterior_probs"] for b in beliefs]), _cat([b["implied_picks"] for b in beliefs]))
    return run


class _InMemory:
    """A ChunkStore's interface without files (one process, nothing to resume)."""

    def __init__(self, n_users: int, chunk_users: int):
        self.n_users, self.chunk_users, self.folder, self.payloads = n_users, chunk_users, None, {}

    n_chunks = ChunkStore.n_chunks
    rows = ChunkStore.rows

    def save(self, chunk, payload):
        self.payloads[chunk] = payload

    def load(self, chunk):
        return self.payloads[chunk]

    def chunk_files(self):
        return self.payloads


def play_users(domain: Domain, assistant, data: ProtocolData, seed: int, *, user_domain: Domain | None = None,
               reference: bool = True, elicit_beliefs: bool = False, chunk_users: int | None = None,
               store: ChunkStore | None = None, done: list[int] = (), launch: Launch | None = None,
               progress: ProgressMeter | None = None) -> EvaluationRun | None:
    """Play ``data``'s users (see the module docstring).  ``store``: where chunks go (needed with several
    processes); ``done``: its chunks finished by an earlier run (``ChunkStore.prepare``), not played again.
    Returns the whole run on rank 0, None elsewhere."""
    launch = launch or Launch()
    user_domain = user_domain or domain
    n_users = len(data.users)
    if store is None:
        if launch.distributed:
            raise ValueError("several processes share their results through a ChunkStore: give store")
        store = _InMemory(n_users, chunk_users or n_users)
    pending = [chunk for chunk in range(store.n_chunks) if chunk not in set(done)]
    mine = split_evenly(pending, launch.world_size, launch.rank)
    scorer = getattr(assistant, "scorer", None)
    if progress is not None and scorer is not None and hasattr(scorer, "on_prompts"):
        scorer.on_prompts = progress.hint
    try:
        for chunk in mine:
            start, stop = store.rows(chunk)
            if progress is not None:
                progress.begin_chunk(stop - start)
            with user_rows(start, stop, n_users):
                run = run_protocol(domain, assistant, seed=seed, user_domain=user_domain, reference=reference,
                                   data=slice_data(data, start, stop), progress=None if progress is None else progress.step)
                if elicit_beliefs:
                    run.beliefs = elicit(run, assistant, None if progress is None else progress.step)
            store.save(chunk, run_payload(run))
            if progress is not None:
                progress.end_chunk(stop - start)
    finally:
        if scorer is not None and hasattr(scorer, "on_prompts"):
            scorer.on_prompts = None
    if launch.distributed and launch.is_main:  # show the others' progress until their chunks are all there
        while len(store.chunk_files()) < store.n_chunks:
            if progress is not None:
                progress.refresh()
            time.sleep(POLL_INTERVAL_S)
    launch.barrier()
    if not launch.is_main:
        return None
    payloads = [store.load(chunk) for chunk in range(store.n_chunks)]
    return assemble(domain, user_domain, assistant.name, seed, data, payloads)


def evaluate_users(domain: Domain, assistant, users: torch.Tensor, seed: int, n_heldout: int, *,
                   user_domain: Domain | None = None, reference: bool = True, progress: ProgressMeter | None = None,
                   ) -> EvaluationRun:
    """``run_protocol`` on ``users`` (simulated data) through ``play_users`` in this one process: the same run,
    and the same path as a data-parallel evaluation takes."""
    data = simulate_protocol_data(domain, users, seed, n_heldout, user_domain)
    return play_users(domain, assistant, data, seed, user_domain=user_domain, reference=reference, progress=progress)
