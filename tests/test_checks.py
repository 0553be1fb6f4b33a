"""The stage checks: the reference scores full points, every buggy submission of the catalogue
(tests/submissions/) fails the right stage with the right hint and passes the others, every valid
alternative scores full points, and the judges survive malformed data.

Everything here runs in-process (run_in_process); the isolated grader is tested in test_grading.py.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import solutions
from catalogue import BASE_ANSWER, ENTRY_KINDS, SUBMISSIONS, read_entry, submission_body, submission_source
from vitlab.checks import STAGES, assert_stage, check, run_in_process
from vitlab.checks.base import CheckResult, StageResult, evaluate_stage, first_non_plain
from vitlab.checks.probing import RAISED

CONTRACT_SYMBOLS = tuple(solutions.__all__)
REFERENCE = {name: getattr(solutions, name) for name in CONTRACT_SYMBOLS}


# --- the catalogue -------------------------------------------------------------------------

def parse_expectations(path: Path) -> dict[str, tuple[str, str]]:
    """stage -> (status, hint substring or "") from the header comments; stages not named pass.

    `# expect: valid`, `# expect: STAGE: HINT` (+ `# also-fails: STAGE`), or
    `# expect-status: STAGE=STATUS ...`."""
    text = path.read_text()
    expected = {stage: ("passed", "") for stage in STAGES}
    found = False
    for line in text.splitlines():
        if m := re.fullmatch(r"# expect: valid", line):
            found = True
        elif m := re.fullmatch(r"# expect: (\w+): (.+)", line):
            expected[m[1]], found = ("failed", m[2]), True
        elif m := re.fullmatch(r"# also-fails: (\w+)", line):
            expected[m[1]] = ("failed", "")
        elif m := re.fullmatch(r"# expect-status: (.+)", line):
            for item in m[1].split():
                stage, status = item.split("=")
                expected[stage] = (status, "")
            found = True
    assert found, f"{path.name} has no '# expect:' header"
    assert set(expected) == set(STAGES), f"{path.name} names an unknown stage: {set(expected) - set(STAGES)}"
    return expected


def load(path: Path) -> dict:
    spec = importlib.util.spec_from_file_location(f"vitlab_submission_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


CATALOGUE = sorted(p for p in SUBMISSIONS.glob("*.py") if p.stem != BASE_ANSWER)
BUGGY = [p for p in CATALOGUE if p.stem.startswith("bug_")]
VALID = [p for p in CATALOGUE if p.stem.startswith("valid_")]


@pytest.fixture(scope="session")
def submission_file(tmp_path_factory):
    """name -> the submission written out whole as a real NAME.py (once a session)."""
    folder = tmp_path_factory.mktemp("submissions")

    @functools.cache
    def write(name: str) -> Path:
        path = folder / f"{name}.py"
        path.write_text(submission_source(name))
        return path
    return write


@pytest.fixture(scope="session")
def submissions(submission_file):
    """name -> the submission's symbols, loaded from its file once."""
    return functools.cache(lambda name: load(submission_file(name)))


@pytest.fixture(scope="session")
def graded(submissions):
    """name -> the submission checked on every stage, once."""
    @functools.cache
    def graded_once(name: str) -> dict[str, StageResult]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return grade(submissions(name))
    return graded_once


def grade(symbols: dict, seed: int = 0) -> dict[str, StageResult]:
    return {stage: run_in_process(stage, symbols, seed=seed) for stage in STAGES}


def test_catalogue_size_and_headers():
    assert len(BUGGY) >= 20 and len(VALID) >= 8
    for path in CATALOGUE:
        assert path.stem.startswith(ENTRY_KINDS), f"{path.name}: not one of {ENTRY_KINDS}"
        parse_expectations(path)


def test_every_entry_changes_its_base_into_a_self_contained_submission():
    for path in CATALOGUE:
        name, base = path.stem, read_entry(path.stem).base
        assert submission_body(name) != submission_body(base or BASE_ANSWER), f"{name} changes nothing"
        assert not re.search(rf"^\s*(import|from)\s+(solutions|{BASE_ANSWER})\b",
                             submission_source(name), re.M), f"{name} imports what it must not"


def test_the_base_answer_scores_full_points_without_warnings(graded):
    results = graded(BASE_ANSWER)
    assert {s: r.status for s, r in results.items()} == {s: "passed" for s in STAGES}
    assert sum(r.points for r in results.values()) == 60
    assert all(r.warnings == [] for r in results.values())


def test_every_catalogue_submission_defines_the_whole_contract(submissions):
    for path in CATALOGUE:
        assert [s for s in CONTRACT_SYMBOLS if s not in submissions(path.stem)] == [], path.stem


@pytest.mark.parametrize("path", CATALOGUE, ids=lambda p: p.stem)
def test_catalogue_submission(path, graded):
    expected = parse_expectations(path)
    results = graded(path.stem)
    for stage, (status, hint) in expected.items():
        result = results[stage]
        assert result.status == status, f"{stage}: {result.report()}"
        if hint:
            assert any(hint in message for message in result.messages), \
                f"{stage}: no message contains {hint!r}:\n{result.report()}"
        if status == "passed":
            assert result.points == result.max_points == 10
        if status == "failed":
            assert 0 <= result.points < result.max_points
            assert all(c.expected and c.got and c.hint for c in result.checks if not c.passed)


def test_valid_alternatives_get_full_points_and_only_the_documented_warnings(graded):
    for path in VALID:
        results = graded(path.stem)
        assert sum(r.points for r in results.values()) == 60, path.name
        warned = [w for r in results.values() for w in r.warnings]
        wanted = re.findall(r"^# expect-warning: (.+)$", path.read_text(), re.M)
        assert len(warned) == len(wanted) and all(any(w in m for m in warned) for w in wanted), \
            (path.name, warned)


# --- the reference -------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 7])
def test_reference_scores_full_points(seed):
    results = grade(REFERENCE, seed)
    assert {s: r.status for s, r in results.items()} == {s: "passed" for s in STAGES}
    assert sum(r.points for r in results.values()) == 60
    assert all(r.warnings == [] for r in results.values())


def test_stages_are_in_course_order_with_ten_points_each():
    assert list(STAGES) == ["patching", "cls_token", "skeleton", "encoder_block", "head", "training"]
    for stage in STAGES.values():
        assert stage.max_points == 10
        assert set(stage.symbols) <= set(CONTRACT_SYMBOLS)


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def test_probe_data_is_plain_inputs_are_seeded_and_left_alone():
    for stage in STAGES.values():
        inputs = stage.make_inputs(3)
        assert first_non_plain(inputs) is None, stage.name
        assert same(inputs, stage.make_inputs(3)) and not same(inputs, stage.make_inputs(4))
        data = stage.probe(REFERENCE, inputs)
        assert first_non_plain(data) is None, stage.name
        assert same(inputs, stage.make_inputs(3)), f"{stage.name}: the probe changed its inputs"


def test_first_non_plain_names_the_offending_value():
    assert first_non_plain({"a": [1, 2.0, None, "x", np.zeros(3)]}) is None
    assert first_non_plain({"a": [1, torch.zeros(2)]}) == "data['a'][1]: Tensor"
    assert first_non_plain({1: 2}) == "data: a key of type int"
    assert first_non_plain(np.array(["x"])) == "data: ndarray"
    assert first_non_plain(object()) == "data: object"


# --- the judges never trust the data -------------------------------------------------------

def reference_data(stage_name: str, seed: int = 0):
    stage = STAGES[stage_name]
    inputs = stage.make_inputs(seed)
    return stage, inputs, stage.probe(REFERENCE, copy.deepcopy(inputs))


def corrupt(value, how: str):
    """Every array in `value` replaced by NaN, or by a wrong shape."""
    if isinstance(value, np.ndarray):
        return np.full(value.shape, np.nan) if how == "nan" else np.zeros((1,) + value.shape)
    if isinstance(value, dict):
        return {k: corrupt(v, how) for k, v in value.items()}
    if isinstance(value, list):
        return [corrupt(v, how) for v in value]
    return value


@pytest.mark.parametrize("stage_name", list(STAGES))
def test_judges_fail_malformed_data_without_crashing(stage_name):
    stage, inputs, data = reference_data(stage_name)
    assert evaluate_stage(stage, inputs, data).status == "passed"
    for bad in ({}, {key: None for key in data}, {key: "text" for key in data},
                {key: {RAISED: "Boom"} for key in data}):
        result = evaluate_stage(stage, inputs, bad)
        assert result.status == "failed" and result.points == 0, (bad, result.report())
        assert all(c.got for c in result.checks)
    for how in ("nan", "shape"):
        result = evaluate_stage(stage, inputs, corrupt(data, how))
        assert result.status == "failed", (how, result.report())
    for key in data:  # one entry at a time, each replaced by something of the wrong type
        for junk in (None, 3, "x", [1, 2], {"x": 1}, np.zeros(2)):
            result = evaluate_stage(stage, inputs, {**data, key: junk})
            assert result.status in ("passed", "failed")
    not_a_dict = evaluate_stage(stage, inputs, ["not", "a", "dict"])
    assert not_a_dict.status == "failed" and not_a_dict.points == 0
    tensors = evaluate_stage(stage, inputs, {"x": torch.zeros(1)})
    assert tensors.status == "error" and "Tensor" in tensors.error


# --- statuses: not implemented, error ------------------------------------------------------

def test_missing_symbols_make_the_stage_not_implemented():
    result = run_in_process("encoder_block", {**REFERENCE, "MultiHeadSelfAttention": None})
    assert result.status == "not_implemented" and result.points == 0
    assert "MultiHeadSelfAttention" in result.error


def test_the_head_stage_grades_the_head_without_a_vision_transformer():
    symbols = {k: v for k, v in REFERENCE.items() if k != "VisionTransformer"}
    result = run_in_process("head", symbols)
    assert result.status == "failed"
    assert result.points == 5.5  # the head's own checks; the whole-model checks fail
    assert all("VisionTransformer" in c.got for c in result.checks if not c.passed)


def test_a_student_exit_or_crash_outside_a_sub_check_is_an_error():
    def exits(*args, **kwargs):
        sys.exit(3)

    result = run_in_process("training", {**REFERENCE, "train_one_epoch": exits})
    assert result.status == "error" and "SystemExit" in result.error and "exits" in result.error


def test_a_crash_fails_one_check_and_names_the_students_line():
    class ExplodingMean(solutions.ClassificationHead):
        def forward(self, x):
            if self.pool == "mean":
                raise ValueError("mean pooling is broken")
            return super().forward(x)

    result = run_in_process("head", {**REFERENCE, "ClassificationHead": ExplodingMean})
    failed = [c for c in result.checks if not c.passed]
    assert result.status == "failed" and len(failed) == 2  # the shape check and the mean check
    assert all("ValueError: mean pooling is broken" in c.got for c in failed)
    assert "ExplodingMean.forward" in failed[0].got and "test_checks.py" in failed[0].got


def test_patched_torch_comparisons_do_not_fool_the_judge(monkeypatch, submission_file):
    buggy = load(submission_file("bug_no_scale"))
    monkeypatch.setattr(torch, "allclose", lambda *a, **k: True)
    monkeypatch.setattr(torch.testing, "assert_close", lambda *a, **k: None)
    assert run_in_process("encoder_block", buggy).status == "failed"


# --- in a notebook -------------------------------------------------------------------------

def test_check_prints_a_report_and_finds_symbols_in_the_callers_scope(capsys):
    ClassToken = solutions.ClassToken  # noqa: F841 - looked up by name from this frame
    result = check("cls_token")
    out, err = capsys.readouterr()
    assert result.status == "passed" and result.points == 10
    assert out.startswith("Stage 2 — class token: 10/10 points (passed)")
    assert out.count("✓") == len(result.checks) and err == ""


def test_check_matches_positional_symbols_by_name_and_keywords(capsys, submission_file):
    buggy = load(submission_file("bug_patch_column_major"))
    result = check("patching", buggy["PatchEmbedding"])
    assert result.status == "failed"
    out = capsys.readouterr().out
    assert "✗ tokens in row-major order" in out and "hint:" in out and "column-major" in out
    named = check("encoder_block", solutions.scaled_dot_product_attention,
                  MultiHeadSelfAttention=solutions.MultiHeadSelfAttention,
                  TransformerEncoderBlock=solutions.TransformerEncoderBlock)
    assert named.status == "passed"
    unknown = check("patching", solutions.PatchEmbedding, solutions.evaluate)
    assert unknown.status == "passed" and "evaluate is not one of PatchEmbedding" in unknown.warnings[0]


def test_check_of_a_stub_says_not_implemented_without_raising(capsys, submission_file):
    stub = load(submission_file("stub_not_implemented"))
    result = check("skeleton", stub["VisionTransformer"])
    assert result.status == "not_implemented"
    assert "VisionTransformer.__init__" in capsys.readouterr().out


def test_assert_stage_is_silent_on_stderr_and_raises_with_the_report(capsys, submission_file):
    class NoisyPatchEmbedding(solutions.PatchEmbedding):
        def forward(self, x):
            warnings.warn("a student's UserWarning")
            print("debug print", file=sys.stderr)
            return super().forward(x)

    NoisyPatchEmbedding.__name__ = "PatchEmbedding"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = assert_stage("patching", NoisyPatchEmbedding)
        buggy = load(submission_file("bug_missing_residual"))
        with pytest.raises(AssertionError) as failure:
            assert_stage("encoder_block", **{k: buggy[k] for k in STAGES["encoder_block"].symbols})
    out, err = capsys.readouterr()
    assert result.status == "passed" and err == "" and caught == []
    assert "skip connection is missing" in str(failure.value) and "expected:" in str(failure.value)


def test_vitlab_check_looks_in_the_notebooks_scope(capsys):
    import vitlab

    PatchEmbedding = solutions.PatchEmbedding  # noqa: F841
    assert vitlab.check("patching").status == "passed"
    with pytest.raises(ValueError, match="Unknown stage 'patchin'"):
        vitlab.check("patchin")


def test_checks_leave_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_in_process("training", REFERENCE)
    run_in_process("head", REFERENCE)
    assert torch.equal(torch.rand(3), expected)


def test_stage_result_renders_for_people_and_for_json():
    checks = [CheckResult("a", True, 4, 4), CheckResult("b", False, 0, 6, "1", "2", "do x")]
    result = StageResult("patching", "failed", 10, checks, ["careful"], title="Stage 1 — patching")
    assert repr(result) == "StageResult('patching', 'failed', 4/10 points)"
    text = str(result)
    assert text.splitlines()[0] == "Stage 1 — patching: 4/10 points (failed)"
    assert "  ✗ b  [0/6]" in text and "hint:     do x" in text and "! warning: careful" in text
    assert result.to_json() == {"passed": 1, "failed": 1, "points": 4, "max_points": 10,
                                "status": "failed", "messages": ["b: expected 1, got 2 — hint: do x"]}
