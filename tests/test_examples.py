"""Every script in examples/ runs in its --quick mode and prints a figure in nats.

The scripts are found with a glob, so a new example is smoke-tested without editing this file.
Each runs as its own process, the way a reader runs it, with the repository on PYTHONPATH.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
TIMEOUT_SECONDS = 120  # the limit for one example in --quick mode
FIGURE_IN_NATS = re.compile(r"[-+−]?\d+(\.\d+)?\s*nats")  # e.g. "-98.21 nats/datapoint"


# Examples that read a data set the package does not ship: skipped, saying why, where it is
# not installed (.ci/run installs Debian's dataset-fashion-mnist).
NEEDS_DATASET = {"fashion_mnist": "fashion-mnist"}


def dataset_missing(name: str) -> str | None:
    from pyro_vae.data import load_dataset
    from pyro_vae.errors import DataError

    try:
        load_dataset(name)
    except DataError as e:
        return str(e)
    return None


def test_there_are_examples():
    assert len(EXAMPLES) >= 5, f"expected the examples of the issue, found {EXAMPLES}"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_quick_and_prints_nats(script, tmp_path):
    if script.stem in NEEDS_DATASET and (why := dataset_missing(NEEDS_DATASET[script.stem])):
        pytest.skip(f"{script.name} needs a data set that is not installed: {why}")
    docstring = script.read_text().split('"""')[1] if '"""' in script.read_text() else ""
    assert f"python examples/{script.name} --quick" in docstring, (
        f"{script.name}: its docstring should give the exact --quick command")
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg",
               # one thread per process: the test suite shares its cores with other work,
               # where OpenMP's spinning threads cost several times the work itself
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), "--quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    assert proc.returncode == 0, (
        f"{script.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    assert FIGURE_IN_NATS.search(proc.stdout), (
        f"{script.name} printed no figure in nats:\n{proc.stdout[-2000:]}")
