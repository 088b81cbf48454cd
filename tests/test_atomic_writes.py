"""Nothing lost on failure: a write interrupted by an error leaves the previous file intact and nothing partial
under the final name (nor a temporary file behind).

Failures simulated: a full disk (ENOSPC) when the bytes are written, and when they are flushed to disk (fsync),
and a serializer that fails (an object JSON cannot encode, a figure that cannot be drawn).  Writers covered:
reports, teaching sets and their manifests, JSON manifests and summaries (eval.io_utils), student cards, saved
prompt templates, plots, models (eval.io_utils.atomic_directory, as distill.training.trainer.write_outputs uses it)
and checkpoints (only a checkpoint with its COMPLETE marker is resumed from).
"""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
from pathlib import Path

import pytest

from eval import io_utils


class DiskFull(OSError):
    def __init__(self):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _HalfThenFull(io.RawIOBase):
    """A file object whose first write puts half its bytes on disk, then the disk is full."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        data = bytes(data) if not isinstance(data, str) else data
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise DiskFull()

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def disk_full_on_write(monkeypatch):
    """Every file opened for writing gets full half-way through its first write."""
    real_open, real_fdopen = builtins.open, os.fdopen

    def wrap(handle, mode):
        return _HalfThenFull(handle) if any(m in str(mode) for m in "wax+") else handle

    def fake_open(file, mode="r", *args, **kwargs):
        return wrap(real_open(file, mode, *args, **kwargs), mode)

    def fake_fdopen(fd, mode="r", *args, **kwargs):
        return wrap(real_fdopen(fd, mode, *args, **kwargs), mode)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "fdopen", fake_fdopen)


def disk_full_on_fsync(monkeypatch):
    def fsync(fd):
        raise DiskFull()

    monkeypatch.setattr(os, "fsync", fsync)


FAILURES = {"enospc-on-write": disk_full_on_write, "enospc-on-fsync": disk_full_on_fsync}


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_untouched(folder: Path, before: dict):
    after = snapshot(folder)
    assert after == before, (f"files changed or left behind: "
                             f"{sorted(set(after) ^ set(before)) or [k for k in after if after[k] != before.get(k)]}")


# ------------------------------------------------------------------------------------------------------------
# the writers: (write version 1 or 2 into folder); version 2 with a failure must leave version 1
# ------------------------------------------------------------------------------------------------------------
def write_report(folder: Path, version):
    from eval.report import save_report

    save_report({"rounds": [0], "accuracy": [0.5], "version": version}, folder / "report.json")


def write_json_manifest(folder: Path, version):
    io_utils.atomic_write_json(folder / "summary.json", {"version": version})


def write_student_card(folder: Path, version):
    from eval.student_card import save_student_card
    from ppl_models import get_domain

    save_student_card(get_domain("hotel" if version == 1 else "flight"), folder)


def write_template(folder: Path, version):
    import dataclasses

    from eval.text.prompt_template import default_template, save_template

    template = default_template()
    if version != 1:
        template = dataclasses.replace(template, name="second")
    save_template(template, folder)


def write_plot(folder: Path, version):
    from eval.report import plot_reports

    report = {"rounds": [0, 1], "accuracy": [0.1, 0.2], "assistant": f"v{version}",
              "metrics": {"accuracy": {"mean": [0.1, 0.2 * version], "ci95": [[0, 0.2], [0.1, 0.3]]}}}
    plot_reports([report], folder / "accuracy.png")


def write_teaching_set(folder: Path, version):
    from distill.teaching_data import write_teaching_set as write
    from ppl_models import get_domain

    write(get_domain("hotel"), "bayesian", folder, n_dialogues=1, n_eval_users=620, seed=version, n_rounds=1)


def write_model(folder: Path, version):
    """As distill.training.trainer.write_outputs: a model folder filled under a temporary name, then renamed."""
    with io_utils.atomic_directory(folder / "model") as tmp:
        (tmp / "config.json").write_text(json.dumps({"version": version}))
        (tmp / "model.safetensors").write_bytes(bytes([version]) * 4096)


WRITERS = {"report": write_report, "manifest-json": write_json_manifest, "student-card": write_student_card,
           "prompt-template": write_template, "plot": write_plot, "teaching-set": write_teaching_set,
           "model": write_model}


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("writer", WRITERS)
def test_a_write_that_fails_leaves_the_previous_file(writer, failure, tmp_path, monkeypatch):
    WRITERS[writer](tmp_path, 1)
    before = snapshot(tmp_path)
    assert before, "the first write wrote nothing"
    with monkeypatch.context() as patch:
        FAILURES[failure](patch)
        with pytest.raises(OSError) as raised:
            WRITERS[writer](tmp_path, 2)
    assert raised.value.errno == errno.ENOSPC
    assert_untouched(tmp_path, before)
    WRITERS[writer](tmp_path, 2)  # and the same write without the failure changes the files
    assert snapshot(tmp_path) != before


def test_the_fake_disk_full_does_cut_a_plain_write(tmp_path, monkeypatch):
    """The simulation is real: a write that is not atomic leaves a partial file under the final name."""
    path = tmp_path / "plain.txt"
    path.write_text("old contents\n")
    with monkeypatch.context() as patch:
        disk_full_on_write(patch)
        with pytest.raises(OSError):
            path.write_text("new contents that are longer\n")
    assert path.read_text() != "old contents\n"


class Unserialisable:
    pass


@pytest.mark.parametrize("writer", ["report", "manifest-json"])
def test_a_failing_serializer_leaves_the_previous_file(writer, tmp_path):
    from eval.report import save_report

    WRITERS[writer](tmp_path, 1)
    before = snapshot(tmp_path)
    with pytest.raises(TypeError):
        if writer == "report":
            save_report({"rounds": [0], "accuracy": [0.5], "bad": Unserialisable()}, tmp_path / "report.json")
        else:
            io_utils.atomic_write_json(tmp_path / "summary.json", {"bad": Unserialisable()})
    assert_untouched(tmp_path, before)


def test_a_plot_that_cannot_be_drawn_leaves_the_previous_png(tmp_path, monkeypatch):
    import matplotlib.figure

    write_plot(tmp_path, 1)
    before = snapshot(tmp_path)

    def broken(self, *args, **kwargs):
        raise RuntimeError("the renderer failed")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(RuntimeError):
        write_plot(tmp_path, 2)
    assert_untouched(tmp_path, before)


def test_a_model_folder_whose_filling_fails_leaves_the_previous_model(tmp_path):
    write_model(tmp_path, 1)
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError):
        with io_utils.atomic_directory(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("save_pretrained failed half-way")
    assert_untouched(tmp_path, before)


def test_a_teaching_set_whose_serialisation_fails_leaves_the_previous_set(tmp_path, monkeypatch):
    import distill.teaching_data as teaching_data

    write_teaching_set(tmp_path, 1)
    before = snapshot(tmp_path)

    def broken(*args, **kwargs):
        raise TypeError("cannot serialise")

    monkeypatch.setattr(teaching_data.json, "dumps", broken)
    with pytest.raises(TypeError):
        write_teaching_set(tmp_path, 2)
    assert_untouched(tmp_path, before)


def test_only_a_checkpoint_with_its_complete_marker_is_resumed_from(tmp_path):
    """The Trainer writes checkpoint-N/ in place; distill.training.callbacks.CompleteMarker adds COMPLETE once it
    is whole.  A checkpoint cut short (no marker), like a temporary folder, is never resumed from."""
    from distill.training.callbacks import CompleteMarker

    checkpoints = tmp_path / "checkpoints"
    for step in (10, 20):
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        (checkpoints / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"x" * 100)

    class Args:
        output_dir = str(checkpoints)
        process_index = 0

    class State:
        global_step = 10
        is_world_process_zero = True

    CompleteMarker('{"seed": 0}').on_save(Args(), State(), None)
    assert io_utils.last_complete_checkpoint(checkpoints) == checkpoints / "checkpoint-10"
    (checkpoints / ".tmp-checkpoint-30-x").mkdir()
    assert io_utils.last_complete_checkpoint(checkpoints) == checkpoints / "checkpoint-10"
