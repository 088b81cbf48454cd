"""How ``evaluate`` plays its users: in chunks kept in the output folder (``--resume``), over the processes
of ``torchrun`` / ``accelerate launch`` (or ``--accelerate-config``), with one progress bar (eval/runner)."""
from __future__ import annotations


import click

DEFAULT_CHUNK_USERS_LM = 1  # a killed LM evaluation redoes at most one user's prompts
DEFAULT_CHUNK_USERS_BUILTIN = 50  # built-in assistants are fast: fewer, larger chunks


def evaluation_run_options(function):
    function = click.option(
        "--accelerate-config", type=click.Path(dir_okay=False), default=None,
        help="Run this command under `accelerate launch --config_file FILE` (e.g. configs/accelerate/ddp.yaml): its "
             "processes share the users; the file is checked first.",
    )(function)
    function = click.option(
        "--resume-if-partial", is_flag=True,
        help="As --resume when --out holds a partial evaluation, else start fresh (for jobs that are re-queued).",
    )(function)
    function = click.option(
        "--resume", is_flag=True,
        help="Continue the partial evaluation in --out (same arguments): chunks of users already finished are kept, "
             "the rest are played; the report equals an uninterrupted run's.",
    )(function)
    return click.option(
        "--chunk-users", type=click.IntRange(min=1), default=None,
        help="Users per chunk: each finished chunk is kept in --out/partial/ (what a killed run loses at most) and "
             "chunks are shared among processes (default: 1 for --model, 50 for built-in assistants).",
    )(function)


def play_evaluation(domain, assistant, users, seed, n_heldout, elicit_beliefs, out_dir, arguments: dict, *,
                    chunk_users, resume: str, launch, description: str, data=None):
    """Simulate all users, play them in chunks over the launch's processes (resuming finished chunks when
    ``resume`` is "yes" or "if-any"); the whole EvaluationRun on rank 0, None on the others.  The caller writes
    the report and then calls ``finish`` (rank 0).  ``data``: the users' ProtocolData when the caller made it
    (e.g. actively designed dialogues, eval/design.py); default: simulated here."""
    from ppl_models.errors import BayesTeachError

    from eval.beliefs.scale import belief_sites
    from eval.protocol import simulate_protocol_data
    from eval.runner import ChunkStore, ProgressMeter, acquire_lock, play_users, prompts_per_user

    data = simulate_protocol_data(domain, users, seed, n_heldout) if data is None else data
    store = ChunkStore(out_dir, arguments, len(users), chunk_users)
    lock, outcome = None, None
    if launch.is_main:
        try:
            lock = acquire_lock(out_dir)
            had_partial = (store.folder / "manifest.json").is_file()
            done = store.prepare(resume)
            if had_partial and resume == "no":
                click.echo(f"note: discarded the partial evaluation in {store.folder} (--resume keeps it)", err=True)
            if done:
                click.echo(f"resuming: {len(done)} of {store.n_chunks} chunks finished, {store.n_chunks - len(done)} to play",
                           err=True)
            outcome = ("ok", done)
        except BayesTeachError as error:
            outcome = ("error", str(error))
    outcome = launch.broadcast(outcome)
    if outcome[0] == "error":
        if launch.is_main:
            from eval.runner import release_lock

            release_lock(lock)
            raise BayesTeachError(outcome[1])
        raise SystemExit(2)  # rank 0 says why
    done = outcome[1]
    done_users = sum(store.rows(c)[1] - store.rows(c)[0] for c in done)
    steps = prompts_per_user(domain.n_rounds, n_heldout, len(belief_sites(domain)) if elicit_beliefs else 0)
    progress = ProgressMeter(description, len(users), steps, done_users=done_users, rank=launch.rank,
                             world_size=launch.world_size, folder=store.folder)
    try:
        run = play_users(domain, assistant, data, seed, elicit_beliefs=elicit_beliefs, store=store, done=done,
                         launch=launch, progress=progress)
    except BaseException:
        progress.close()
        if launch.is_main:
            from eval.runner import release_lock

            release_lock(lock)
        raise
    progress.close()
    return run, Finisher(store, lock)


class Finisher:
    """Rank 0, once the report is written: remove the partial results and the lock."""

    def __init__(self, store, lock):
        self.store, self.lock = store, lock

    def __call__(self):
        from eval.runner import release_lock

        self.store.finish()
        release_lock(self.lock)


def resolve_dtype_choice(name: str, device: str, load_in_4bit: bool = False) -> dict:
    """``--dtype NAME`` on ``device``: {"requested", "dtype" (its name), "reason", "torch_dtype"}; auto by the
    hardware (``eval.lm.loading.auto_dtype``)."""
    from eval.lm.loading import auto_dtype, dtype_from_name

    if name == "auto":
        dtype, reason = auto_dtype(device)
        reason = f"--dtype auto: {reason}"
    else:
        dtype, reason = dtype_from_name(name), f"--dtype {name} given"
    if load_in_4bit:
        reason += "; 4-bit weights, this is the compute dtype"
    return {"requested": name, "dtype": str(dtype).removeprefix("torch."), "reason": reason, "torch_dtype": dtype}
