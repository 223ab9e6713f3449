"""benchmarks/log_likelihood.py runs in quick mode both as a file and as a module, and writes
the tables, the plot and every part it promises (nothing here judges the numbers or the
speed: that is the benchmark's job)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # scripts and commands run whole (the full tier)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["file", "module"])
def test_quick_mode_writes_every_part(how, tmp_path):
    out = tmp_path / "out"
    command = ([sys.executable, str(REPO / "benchmarks" / "log_likelihood.py")] if how == "file"
               else [sys.executable, "-m", "benchmarks.log_likelihood"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([*command, "--quick", "--quiet", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    document = json.loads((out / "log_likelihood.json").read_text())
    assert set(document["parts"]) == {"linear-gaussian", "default", "iwae", "burda",
                                      "burda-timing"}
    assert (out / "log_likelihood.png").stat().st_size > 0
    markdown = (out / "log_likelihood.md").read_text()
    for heading in ("## Targets", "## BDMC on simulated data", "## Inference gaps",
                    "## Ranking of the two estimators", "## AIS timing and throughput"):
        assert heading in markdown
