"""Bad inputs and faults, tried the way a user would: the catalogue of tests/faults.py (over
300 cases across arguments, resources, data files, checkpoints, metrics, run folders, resumes
and the Python API), then Hypothesis over argument values and file contents. Each ends in
success or a clean one-line error; never a traceback, a silent wrong result, or a changed
run folder."""

import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults import MEMORY_LIMIT_MB, TINY, catalogue, fingerprint, make_template, run_all
from tests.faults import run_cli as run_cli_in

pytestmark = pytest.mark.integration  # scripts and commands run whole (the full tier)

CATALOGUE = catalogue()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_template(tmp_path_factory.mktemp("faults") / "template")


@pytest.fixture(scope="module")
def verdicts(template, tmp_path_factory):
    return {v["kind"] + ": " + v["name"]: v
            for v in run_all(CATALOGUE, tmp_path_factory.mktemp("cases"), template)}


def test_the_catalogue_covers_every_class_of_fault():
    kinds = {f.kind for f in CATALOGUE}
    assert kinds == {"argument", "resource", "data file", "checkpoint", "metrics",
                     "run folder", "resume", "api"}
    assert len(CATALOGUE) >= 250


@pytest.mark.parametrize("case", [f"{f.kind}: {f.name}" for f in CATALOGUE])
def test_fault(verdicts, case):
    v = verdicts[case]
    assert not v["traceback"], v["trace"]
    assert not v["lost"], f"the run folder changed: {v['message']}"
    assert not v["silent"], (f"expected {v['expected']}, got exit {v['status']}: "
                             f"{v['message']}")
    if v["expected"] == "error":
        assert v["message"], "an error without a message"


# --- Hypothesis -----------------------------------------------------------------------------
OPTIONS = ["--epochs", "--batch-size", "--latent-dim", "--hidden-sizes", "-K", "--lr",
           "--beta", "--beta-warmup", "--seed", "--estimator", "--likelihood", "--preset",
           "--activation", "--lr-schedule", "--likelihood-scale", "--train-size",
           "--test-size", "--device"]
VALUES = st.one_of(
    st.integers(-2**70, 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
            max_size=8),
    st.sampled_from(["meanfield", "iwae", "gaussian", "burda", "tanh", "cpu", "1", "3"]),
)


def one_line_or_success(status, stderr) -> None:
    assert status in (0, 2), (status, stderr)
    assert "Traceback" not in stderr
    if status == 2:
        errors = [line for line in stderr.splitlines() if "error" in line.lower()]
        assert len(errors) == 1, stderr


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(st.sampled_from(OPTIONS), VALUES), min_size=1, max_size=3))
def test_train_arguments_never_end_in_a_traceback(pairs, tmp_path, monkeypatch):
    """Any values for any options: the tiny sizes come last, so a valid combination trains a
    second; a size that cannot fit is refused under the memory limit."""
    monkeypatch.setenv("PYRO_VAE_MEMORY_LIMIT_MB", MEMORY_LIMIT_MB)
    out = tmp_path / "new"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["train", *[x for pair in pairs for x in pair], "--out", str(out), "--epochs", "1",
            *[a for a in TINY if a not in ("--hidden-sizes", "8")]]
    outcome = run_cli_in(argv)
    assert outcome.traceback is None, outcome.traceback
    one_line_or_success(outcome.status, outcome.stderr)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["schema", "version", "config", "epochs", "epoch",
                                       "log_px", "mean", "num_samples", "num_datapoints",
                                       "train_objective_nats", "test_elbo"]), children,
                      max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metrics=JSON, evaluation=JSON)
def test_plot_of_any_json_never_ends_in_a_traceback(template, tmp_path, metrics, evaluation):
    run = tmp_path / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(template / "run", run)
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    before = fingerprint(run)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        outcome = run_cli_in(["plot", "run"])
    finally:
        os.chdir(cwd)
    assert outcome.traceback is None, outcome.traceback
    one_line_or_success(outcome.status, outcome.stderr)
    assert fingerprint(run) == before


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(at=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=3),
       xor=st.integers(1, 255))
def test_a_damaged_checkpoint_is_evaluated_exactly_or_refused(template, tmp_path, at, xor):
    """Bytes flipped anywhere in the checkpoint: `evaluate` refuses it in one line, or (bytes
    that hold nothing, like the archive's padding) gives exactly the undamaged figures."""
    run = tmp_path / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(template / "run", run)
    raw = bytearray((run / "checkpoint.pt").read_bytes())
    for fraction in at:
        raw[int(fraction * len(raw))] ^= xor
    (run / "checkpoint.pt").write_bytes(bytes(raw))
    out = tmp_path / "e.json"
    outcome = run_cli_in(["evaluate", str(run), "-K", "30", "--quiet", "-o", str(out)])
    assert outcome.traceback is None, outcome.traceback
    one_line_or_success(outcome.status, outcome.stderr)
    if outcome.status == 0:
        reference = json.loads((template / "run" / "evaluation.json").read_text())
        assert json.loads(out.read_text())["log_px"]["mean"] == reference["log_px"]["mean"]
