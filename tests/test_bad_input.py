"""Bad input over the whole command line, generated from the click command tree.

Every command, option and argument of ``cli.main`` is walked and the cases come from the parameter's type, so a
new option is covered without a new test:

* input files and folders (click.Path): missing, empty, truncated in the middle of a valid file, random bytes,
  valid JSON of the wrong shape (a list where an object is expected, a string where a number is), a folder
  where a file is expected and the reverse, unreadable;
* output paths (``commands.common.OutputPath``): under a regular file, in a read-only folder, an existing file
  where a folder is expected and the reverse;
* numbers: 0, negative, huge, and for floats nan and infinity;
* names (click.Choice and free text: domain, teacher, method, mode, dtype, model, ...): unknown, empty, wrong
  case, and ``module:attr`` specs whose module is missing, whose attribute is missing, whose attribute is
  neither a Domain nor a function returning one, or a function that needs arguments.

Each case ends in success or in exit code 2 with one ``Error:`` line that names the input (its option or its
value); never a traceback, never a hang (an alarm per case), never exit code 0 without the outputs it was asked
for.  The fast cases run in this process (CliRunner) with the expensive work of ``train`` and ``distill``
(building and training a model, writing a teaching set) replaced by a stub: reaching it means every check of the
input passed, so each command must check its input before that work.  The ``slow`` part runs the ``train`` cases
that reached the stub for real.  Tests often run as root, which reads and writes whatever a file's mode says; the
unreadable and read-only cases drop root's capabilities to override file modes while they run
(``obeying_file_permissions``), and are skipped, saying why, where that cannot be done.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli import main
from commands.common import OutputPath

ROOT = Path(__file__).resolve().parents[1]
STUDY_SAMPLE = ROOT / "tests" / "data" / "study_sample"
CASE_SECONDS = 120  # a hang is a failure, not a stuck CI job
HUGE_INT = 10**12
SKIPPED_PARAMS = {"help", "debug"}

# A cheap valid invocation of every command; "{name}" is filled from the samples (see `samples`).  A case
# replaces the one parameter it is about.  A new command needs a line here (test_every_command_has_a_base).
BASE = {
    "domains": [],
    "simulate": ["--domain", "hotel", "--users", "2", "--heldout", "2"],
    "posterior": ["--domain", "flight", "--dialogue", "{dialogue}"],
    "evaluate": ["--domain", "hotel", "--assistant", "bayesian", "--users", "2", "--heldout", "2",
                 "--no-elicit-beliefs", "--out", "{out_dir}"],
    "plot": ["{report}", "--out", "{out_file}"],
    "make-data": ["--domain", "hotel", "--dialogues", "1", "--eval-users", "620", "--rounds", "1", "--out", "{out_dir}"],
    "train": ["--data", "{teaching_set}", "--domain", "hotel", "--max-steps", "1", "--out", "{out_dir}"],
    "distill": ["--domain", "hotel", "--eval-users", "4", "--heldout", "1", "--dialogues", "1", "--teach-rounds", "1",
                "--max-steps", "1", "--out", "{out_dir}"],
    "convert-model": ["{gguf}", "{out_dir}"],
}
# what a parameter needs beside it to be read at all (the catalogue is the webshop domain's)
NEEDS = {"catalog": ["--domain", "webshop"]}
# a valid file or folder for each input parameter, by its name (the generic cases use a small JSON object for
# others, so a new input option is covered before anyone adds a sample)
SAMPLE_OF = {"dialogue_path": "dialogue", "reports": "report", "data_path": "teaching_set", "users_of": "manifest",
             "prompt_template": "prompt_template", "recipe": "recipe", "accelerate_config": "accelerate_config",
             "catalog": "catalog", "study_dir": "study_dir", "gguf_file": "gguf", "out_dir": "out_dir"}
# the expensive steps the fast cases stop at (module, attribute): reaching one means the input passed every check
WORK = [("distill.student.model", "train_student"), ("distill.training.trainer", "train"),
        ("distill.training.launch", "relaunch"), ("distill.pipeline", "write_teaching_set"), ("eval.lm.convert", "convert_gguf")]


class ReachedWork(Exception):
    """The command got past its checks to the work the fast cases do not do."""


class Hang(BaseException):
    """A case ran past CASE_SECONDS."""


@dataclasses.dataclass(frozen=True)
class Case:
    command: str
    param: str  # the parameter's name
    label: str  # what is wrong with the value
    make: str  # the maker of the value: a key of VALUE_MAKERS
    option: str | None  # the option's flag ("--out"); None for an argument

    @property
    def id(self) -> str:
        return f"{self.command}-{self.option or self.param}-{self.label}"


# ------------------------------------------------------------------------------------------------------------
# cases from the command tree
# ------------------------------------------------------------------------------------------------------------
def parameters():
    """(command name, click parameter) for every parameter of every command, help and --debug aside."""
    for name, command in sorted(main.commands.items()):
        for param in command.params:
            if param.name not in SKIPPED_PARAMS:
                yield name, param


def cases_for(name: str, param: click.Parameter) -> list[Case]:
    option = max(param.opts, key=len) if isinstance(param, click.Option) else None
    kind = param.type

    def case(label, make):
        return Case(name, param.name, label, make, option)

    if isinstance(param, click.Option) and param.is_flag:
        return []  # a flag has no bad value; flags that need some state are test_flags_that_need_state_*
    if isinstance(kind, OutputPath):
        found = [case("under-a-file", "under_a_file"), case("read-only-folder", "read_only_folder")]
        found.append(case("file-for-folder", "a_file") if kind.kind == "dir" else case("folder-for-file", "a_folder"))
        return found
    if isinstance(kind, click.Path):
        found = [case("missing", "missing"), case("unreadable", "unreadable")]
        if kind.dir_okay and not kind.file_okay:  # a folder
            return found + [case("empty-folder", "empty_folder"), case("file-for-folder", "a_file"),
                            case("truncated-files", "truncated_files"), case("random-byte-files", "random_files")]
        found += [case("empty", "empty_file"), case("truncated", "truncated"), case("random-bytes", "random_bytes"),
                  case("list-for-object", "json_list"), case("string-for-number", "string_for_number")]
        if not kind.dir_okay:
            found.append(case("folder-for-file", "empty_folder"))
        return found
    if isinstance(kind, (click.types.IntParamType, click.types.FloatParamType)):
        found = [case("zero", "zero"), case("negative", "negative"), case("huge", "huge")]
        if isinstance(kind, click.types.FloatParamType):
            found += [case("nan", "nan"), case("infinity", "infinity")]
        return found
    if isinstance(kind, click.Choice):
        return [case("unknown", "unknown"), case("empty", "empty"), case("wrong-case", "wrong_case")]
    if isinstance(kind, click.types.StringParamType):
        return [case("unknown", "unknown"), case("empty", "empty"), case("wrong-case", "wrong_case"),
                case("module-missing", "spec_no_module"), case("attribute-missing", "spec_no_attribute"),
                case("attribute-not-a-domain", "spec_not_a_domain"),
                case("function-not-returning-a-domain", "spec_function_not_a_domain"),
                case("function-needing-arguments", "spec_function_needing_arguments")]
    raise AssertionError(f"{name} {param.name}: no bad-input cases for a parameter of type {kind!r}; add them here")


def generate_cases() -> list[Case]:
    return [case for name, param in parameters() for case in cases_for(name, param)]


CASES = generate_cases()
# The cases of these commands that pass every check are also run for real (slow): one optimizer step of the
# embedded student on a tiny teaching set.  distill's real run costs minutes a case; --accelerate-config
# starts `accelerate launch` (several processes); a huge --max-steps asks for a run that long.
REAL_RUN = [c for c in CASES if c.command == "train" and c.param != "accelerate_config"
            and not (c.param == "max_steps" and c.label == "huge")]


# ------------------------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------------------------
def _random_bytes(n: int = 300) -> bytes:
    return random.Random(0).randbytes(n)


def _sample(samples: dict, param: click.Parameter) -> Path:
    """A valid file or folder for ``param`` (a small JSON object for a parameter without a sample)."""
    key = SAMPLE_OF.get(param.name)
    if key is not None:
        return samples[key]
    return samples["generic_json"]


def _file_like(samples, param, tmp: Path, name: str) -> Path:
    """A path in ``tmp`` with the sample's name (its suffix tells some readers what the file is)."""
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder / _sample(samples, param).name


def _cut(data: bytes) -> bytes:
    """The first half of ``data``, cut inside a line (not just after a newline)."""
    half = len(data) // 2
    return data[: half - 3] if half > 3 and data[half - 1: half] == b"\n" else data[:half]


def _fill(target: Path, source: Path, transform) -> Path:
    """``target``: a copy of ``source`` (a file or a folder) with every file's bytes put through ``transform``."""
    if source.is_dir():
        shutil.copytree(source, target)
        for path in target.rglob("*"):
            if path.is_file():
                path.write_bytes(transform(path.read_bytes()))
    else:
        target.write_bytes(transform(source.read_bytes()))
    return target


def _string_for_number(data: bytes) -> bytes:
    """The first number that is a value (after a colon, a comma or a bracket) made a string."""
    text = data.decode("utf-8", errors="replace")
    changed = re.sub(r'([:\[,]\s*)(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?=\s*[,}\]\n])', r'\1"x"', text, count=1)
    if changed == text:
        changed = re.sub(r'(^|,)(\d+(?:\.\d+)?)(?=,|$)', r'\1x', text, count=1, flags=re.M)
    return changed.encode()


def make_value(case: Case, param: click.Parameter, samples: dict, tmp: Path, command: str) -> str | None:
    """The bad value of ``case`` (None: the case does not apply to this parameter)."""
    make = case.make
    if make == "missing":
        return str(tmp / "missing" / _sample(samples, param).name)
    if make == "empty_file":
        path = _file_like(samples, param, tmp, "empty")
        path.write_bytes(b"")
        return str(path)
    if make == "truncated":
        source = _sample(samples, param)
        return str(_fill(_file_like(samples, param, tmp, "truncated"), source, _cut))
    if make == "random_bytes":
        return str(_fill(_file_like(samples, param, tmp, "random"), _sample(samples, param), lambda b: _random_bytes()))
    if make == "json_list":
        path = _file_like(samples, param, tmp, "list")
        path.write_text("[1, 2, 3]\n")
        return str(path)
    if make == "string_for_number":
        source = _sample(samples, param)
        changed = _string_for_number(source.read_bytes())
        if changed == source.read_bytes():
            return None
        path = _file_like(samples, param, tmp, "string")
        path.write_bytes(changed)
        return str(path)
    if make == "empty_folder":
        path = tmp / "empty-folder" / _sample(samples, param).name
        path.mkdir(parents=True)
        return str(path)
    if make == "a_file":
        path = tmp / "a-file"
        path.write_text("a file\n")
        return str(path)
    if make == "a_folder":
        path = tmp / "a-folder"
        path.mkdir()
        return str(path)
    if make in ("truncated_files", "random_files"):
        source = _sample(samples, param)
        if not source.is_dir():
            return None
        transform = (_cut) if make == "truncated_files" else (lambda b: _random_bytes())
        return str(_fill(tmp / make, source, transform))
    if make == "unreadable":
        source = _sample(samples, param)
        path = _fill(_file_like(samples, param, tmp, "unreadable"), source, lambda b: b)
        path.chmod(0)
        return str(path)
    if make == "read_only_folder":
        folder = tmp / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return str(folder / "output")
    if make == "under_a_file":
        (tmp / "regular-file").write_text("a file\n")
        return str(tmp / "regular-file" / "sub" / "output")
    if make in ("zero", "negative", "huge", "nan", "infinity"):
        is_int = isinstance(param.type, click.types.IntParamType)
        return {"zero": "0", "negative": "-1", "huge": str(HUGE_INT) if is_int else "1e300", "nan": "nan",
                "infinity": "inf"}[make]
    if make == "unknown":
        return "no-such-name"
    if make == "empty":
        return ""
    if make == "wrong_case":
        if isinstance(param.type, click.Choice):
            return str(param.type.choices[0]).upper() if str(param.type.choices[0]).upper() != param.type.choices[0] else None
        base = _base_value(command, param)
        if base is None and isinstance(param.default, str) and param.default:
            base = param.default
        return (base or "hotel").swapcase()
    return {"spec_no_module": "no_such_module_xyz:domain", "spec_no_attribute": "ppl_models.domains.hotel:no_such_attr",
            "spec_not_a_domain": "ppl_models.domains.hotel:__name__", "spec_function_not_a_domain": "os:getcwd",
            "spec_function_needing_arguments": "json:dumps"}[make]


def _base_value(command: str, param: click.Parameter) -> str | None:
    args = BASE[command]
    for flag in param.opts:
        if flag in args:
            return args[args.index(flag) + 1]
    return None


def arguments(command: str, param: click.Parameter, value: str, samples: dict, tmp: Path) -> list[str]:
    """The base invocation of ``command`` with ``param`` set to ``value`` (and what ``param`` needs beside it)."""
    args = [a.format(**{k: str(v) for k, v in samples.items()}, out_dir=tmp / "out", out_file=tmp / "out.png")
            for a in BASE[command]]
    if isinstance(param, click.Argument):
        placeholder = "{" + SAMPLE_OF.get(param.name, "") + "}"
        index = BASE[command].index(placeholder)
        return [command, *args[:index], value, *args[index + 1:]]
    for flag in param.opts + param.secondary_opts:
        while flag in args:
            index = args.index(flag)
            del args[index: index + 2]
    for flag, extra in zip(NEEDS.get(param.name, [])[::2], NEEDS.get(param.name, [])[1::2]):
        if flag in args:
            del args[args.index(flag): args.index(flag) + 2]
        args += [flag, extra]
    return [command, *args, max(param.opts, key=len), value]


# ------------------------------------------------------------------------------------------------------------
# samples: one valid input of each kind, made once
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    runner = CliRunner()
    made = runner.invoke(main, ["make-data", "--domain", "hotel", "--dialogues", "1", "--eval-users", "620",
                                "--rounds", "2", "--out", str(root / "teaching")])
    assert made.exit_code == 0, made.output
    report = root / "report.json"
    simulated = runner.invoke(main, ["simulate", "--domain", "hotel", "--users", "2", "--heldout", "2", "--out", str(report)])
    assert simulated.exit_code == 0, simulated.output
    option = {"departure time": "06:00 AM", "duration": "30 min", "number of stops": 0, "price": "$1000"}
    dialogue = root / "dialogue.json"
    dialogue.write_text(json.dumps({"rounds": [{"options": [option, dict(option, price="$100"),
                                                            dict(option, **{"departure time": "10:00 PM"})],
                                                "choice": 2}]}, indent=1))
    catalog = root / "catalog.jsonl"
    lines = (ROOT / "ppl_models" / "data" / "webshop_catalog.jsonl").read_text().splitlines()
    catalog.write_text("\n".join(lines[:60]) + "\n")
    recipe = root / "recipe.yaml"
    recipe.write_text("learning_rate: 0.001\nbatch_size: 2\nseed: 0\n")
    accelerate_config = root / "ddp.yaml"
    shutil.copy(ROOT / "configs" / "accelerate" / "ddp.yaml", accelerate_config)
    template = root / "template.json"
    shutil.copy(ROOT / "eval" / "text" / "templates" / "default.json", template)
    generic = root / "input.json"
    generic.write_text(json.dumps({"name": "x", "values": [1, 2, 3]}, indent=1))
    study = root / "study"
    shutil.copytree(STUDY_SAMPLE / "eval" / "interaction", study / "eval" / "interaction",
                    ignore=shutil.ignore_patterns("flight_*", "webshop"))
    shutil.copytree(STUDY_SAMPLE / "eval" / "heldout", study / "eval" / "heldout", ignore=shutil.ignore_patterns("webshop", "flight*"))
    return {"teaching_set": root / "teaching" / "train-bayesian.jsonl", "manifest": root / "teaching" / "manifest.json",
            "report": report, "dialogue": dialogue, "catalog": catalog, "recipe": recipe,
            "accelerate_config": accelerate_config, "prompt_template": template, "generic_json": generic,
            "study_dir": study, "gguf": "smollm2"}


# ------------------------------------------------------------------------------------------------------------
# running a case and judging its outcome
# ------------------------------------------------------------------------------------------------------------
class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_CAP_VERSION_3 = 0x20080522
_FILE_PERMISSION_OVERRIDES = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


@contextlib.contextmanager
def obeying_file_permissions():
    """Run the body with file permission bits enforced.  Tests often run as root, and root reads and writes
    whatever the mode (chmod 000 stops nobody); so as root this thread's effective capabilities lose
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH for the body (capset), and get them back after.  Skips the test
    where that cannot be done."""
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        pytest.skip("running as root, and the capabilities that let root ignore file modes cannot be read")
    saved = data[0].effective
    data[0].effective &= ~_FILE_PERMISSION_OVERRIDES
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip("running as root, and root's override of file modes cannot be dropped here (capset failed)")
    try:
        yield
    finally:
        data[0].effective = saved
        assert libc.capset(ctypes.byref(header), data) == 0, "could not restore the capabilities"


def _on_alarm(signum, frame):
    raise Hang(f"no answer in {CASE_SECONDS} s")


def invoke(args: list[str], stub_work: bool, monkeypatch):
    """CliRunner result of ``cli.py ARGS`` in this process, with an alarm; the work stubbed when asked."""
    if stub_work:
        import importlib

        def reached(*_, **__):
            raise ReachedWork()

        for module, attribute in WORK:
            monkeypatch.setattr(importlib.import_module(module), attribute, reached)
    monkeypatch.setattr(sys, "argv", ["cli.py", *args])  # train --accelerate-config re-reads its arguments
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(CASE_SECONDS)
    try:
        return CliRunner().invoke(main, args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def names_the_input(line: str, param: click.Parameter, value: str) -> bool:
    """Whether an error line names the input: its option or its value (or the file's name)."""
    marks = [*param.opts, *param.secondary_opts, param.name, param.name.replace("_", " ")]
    if len(value) > 3 and not re.fullmatch(r"[-+.\deE]+|nan|inf", value):  # "0" is in many a line by chance
        marks += [value, Path(value).name, value.split(":")[0]]
    elif value:
        marks += [f"'{value}'", f"{value!r}"]
    else:
        marks += ["''", '""', "empty"]
    return any(mark and mark in line for mark in marks)


def judge(result, case: Case, param: click.Parameter, value: str, args: list[str], stub_work: bool) -> str:
    """'ok', 'work' (reached the stubbed work) or 'rejected'; a failure otherwise."""
    where = f"cli.py {' '.join(args)}"
    if isinstance(result.exception, Hang):
        pytest.fail(f"{where}: hung (no answer in {CASE_SECONDS} s)")
    if isinstance(result.exception, ReachedWork):
        assert stub_work
        return "work"
    output = result.output
    assert "Traceback" not in output, f"{where}: printed a traceback:\n{output}"
    if result.exit_code == 0:
        for other in main.commands[case.command].params:
            if isinstance(other.type, OutputPath) and other.name != param.name:
                given = _given(args, other)
                assert given is None or Path(given).exists(), f"{where}: exit 0 but {other.opts[-1]} {given} not written"
        return "ok"
    if result.exit_code != 2:
        raise AssertionError(f"{where}: exit code {result.exit_code}, not 0 or 2; "
                             f"{type(result.exception).__name__}: {result.exception}\n{output}") from result.exception
    stderr = result.stderr.splitlines()
    errors = [line for line in stderr if line.startswith("Error")]
    others = [line for line in stderr if line.strip() and not line.startswith(("Error", "Usage:", "Try "))]
    assert len(errors) == 1 and not others, f"{where}: not one error line:\n{result.stderr}"
    # the error names this input, or the options of a combination ("--catalog only applies to --domain webshop"),
    # or another input the command reads after accepting this one (a valid truncated catalogue, then a dialogue)
    others_given = [a for a in args[1:] if not a.startswith("-") and os.sep in a and a != value]
    assert (names_the_input(errors[0], param, value) or _names_a_needed_option(errors[0])
            or any(given in errors[0] for given in others_given)), \
        f"{where}: the error does not name {'/'.join(param.opts) or param.name} or {value!r}: {errors[0]}"
    return "rejected"


def _names_a_needed_option(line: str) -> bool:
    """An error about the combination (e.g. "--adapter needs --model") names the options, not the value."""
    return bool(re.search(r"--[a-z]", line))


def _given(args, param):
    for flag in param.opts:
        if flag in args:
            return args[args.index(flag) + 1]
    return None


def _param(case: Case) -> click.Parameter:
    return next(p for p in main.commands[case.command].params if p.name == case.param)


def run_case(case: Case, samples, tmp_path, monkeypatch, stub_work: bool) -> str:
    param = _param(case)
    value = make_value(case, param, samples, tmp_path, case.command)
    if value is None:
        pytest.skip(f"{case.label} does not apply to {case.param}")
    args = arguments(case.command, param, value, samples, tmp_path)
    permissions = obeying_file_permissions() if case.make in ("unreadable", "read_only_folder") else contextlib.nullcontext()
    with permissions:
        result = invoke(args, stub_work, monkeypatch)
    return judge(result, case, param, value, args, stub_work)


def test_every_command_has_a_base_invocation_and_cases():
    assert sorted(BASE) == sorted(main.commands)
    commands_with_cases = {case.command for case in CASES}
    assert commands_with_cases == {name for name, command in main.commands.items()
                                   if any(p.name not in SKIPPED_PARAMS and not getattr(p, "is_flag", False)
                                          for p in command.params)}
    assert len(CASES) >= 300  # a floor: a walk that finds nothing cannot pass


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, samples, tmp_path, monkeypatch, one_torch_thread):
    run_case(case, samples, tmp_path, monkeypatch, stub_work=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", REAL_RUN, ids=[c.id for c in REAL_RUN])
def test_bad_input_accepted_runs_for_real(case, samples, tmp_path, monkeypatch, one_torch_thread):
    """A case that passed every check (it reached the stubbed work) runs for real: success with its outputs, or
    one error line; never a traceback."""
    (tmp_path / "stubbed").mkdir()
    if run_case(case, samples, tmp_path / "stubbed", monkeypatch, stub_work=True) != "work":
        pytest.skip("refused before the work (test_bad_input checks how)")
    monkeypatch.undo()
    (tmp_path / "real").mkdir()
    assert run_case(case, samples, tmp_path / "real", monkeypatch, stub_work=False) in ("ok", "rejected")


# ------------------------------------------------------------------------------------------------------------
# regressions: the tracebacks found by hand, and flags that ask for something the command cannot do
# ------------------------------------------------------------------------------------------------------------
def one_error_line(result) -> str:
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_a_teaching_set_with_one_malformed_json_line_is_one_error_naming_the_line(samples, tmp_path):
    lines = samples["teaching_set"].read_text().splitlines()
    lines[2] = '{"messages": [broken'
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--domain", "hotel", "--max-steps", "1",
                                       "--out", str(tmp_path / "out")])
    assert f"{data}:3: not valid JSON" in one_error_line(result)
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("spec,message", [
    ("json:dumps", "must be a Domain or a function that returns one when called with 0 argument(s)"),
    ("os:getcwd", "is a str, not a Domain (nor a function returning one)"),
    ("ppl_models.domains.hotel:__name__", "is a str, not a Domain"),
    ("ppl_models.domains.hotel:no_such_attr", "has no attribute 'no_such_attr'"),
    ("no_such_module_xyz:domain", "cannot import 'no_such_module_xyz'"),
    ("ppl_models.domains.hotel:__name__(3)", "is not a function to call with 3"),
    (":domain", "give module:attribute"),
])
def test_a_domain_spec_that_is_no_domain_is_one_error(spec, message):
    result = CliRunner().invoke(main, ["simulate", "--domain", spec, "--users", "2", "--heldout", "2"])
    line = one_error_line(result)
    assert message in line and spec.split("(")[0] in line


@pytest.mark.parametrize("command", [["simulate", "--out", "{file}/sub/report.json"],
                                     ["make-data", "--eval-users", "620", "--out", "{file}/sub"],
                                     ["evaluate", "--assistant", "bayesian", "--out", "{file}/sub"]])
def test_an_output_under_a_regular_file_is_one_error_before_any_work(command, tmp_path):
    regular = tmp_path / "regular"
    regular.write_text("x")
    args = [a.format(file=regular) for a in command]
    line = one_error_line(CliRunner().invoke(main, args))
    assert f"{regular} is a file, not a folder" in line and "--out" in line


def test_train_resume_with_nothing_to_resume_refuses_naming_the_flag(samples, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train", "--data", str(samples["teaching_set"]), "--domain", "hotel",
                                       "--max-steps", "1", "--resume", "--out", str(out)])
    line = one_error_line(result)
    assert "--resume: nothing to resume" in line and str(out / "checkpoints") in line and "leave out --resume" in line
    assert not out.exists()


def test_distill_resume_with_nothing_to_resume_refuses(tmp_path):
    result = CliRunner().invoke(main, ["distill", "--domain", "hotel", "--resume", "--out", str(tmp_path / "run")])
    assert "--resume: nothing to resume" in one_error_line(result)


@pytest.mark.parametrize("args,message", [
    (["evaluate", "--assistant", "bayesian", "--mode", "generate"], "--mode does nothing without --model"),
    (["evaluate", "--assistant", "bayesian", "--dtype", "bfloat16", "--load-in-4bit"],
     "--dtype and --load-in-4bit do nothing without --model"),
    (["distill", "--method", "lora"], "--method does nothing for the embedded student"),
    (["distill", "--gradient-checkpointing"], "--gradient-checkpointing does nothing for the embedded student"),
    (["train", "--domain", "hotel", "--merge"], "--merge does nothing for the embedded student"),
    (["train", "--domain", "hotel", "--model", "x"], "--domain is for the embedded student"),
])
def test_options_that_change_nothing_here_say_so(args, message, samples, tmp_path):
    extra = {"evaluate": ["--out", str(tmp_path / "e")], "distill": ["--out", str(tmp_path / "d")],
             "train": ["--data", str(samples["teaching_set"]), "--out", str(tmp_path / "t")]}[args[0]]
    assert message in one_error_line(CliRunner().invoke(main, args + extra))


def test_the_errors_page_lists_every_project_error_class():
    """docs/guide/errors.md names every BayesTeachError subclass with its module (the classes found as
    tests/test_cli.py finds them), so a new error class needs its line there."""
    import importlib
    import inspect
    import pkgutil

    from ppl_models.errors import BayesTeachError

    page = (ROOT / "docs" / "guide" / "errors.md").read_text()
    found = []
    for package in ("ppl_models", "eval", "distill"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, prefix=f"{package}."):
            for name, value in vars(importlib.import_module(info.name)).items():
                if inspect.isclass(value) and issubclass(value, BayesTeachError) and value.__module__ == info.name:
                    found.append((name, info.name))
    assert len(found) >= 15
    missing = [f"{name} ({module})" for name, module in found if f"| `{name}` | `{module}` |" not in page]
    assert missing == []
