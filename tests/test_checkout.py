"""No command dirties the checkout: the README's cheap commands and the benchmarks' smoke runs,
run with their default outputs in a copy of the repository, leave ``git status`` clean; every
script's default output folder is one that git ignores; no tracked file holds a path of the
machine that wrote it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GIT = shutil.which("git")
pytestmark = pytest.mark.skipif(GIT is None or not (ROOT / ".git").exists(),
                                reason="needs git and a git checkout")


def git(*args, cwd=ROOT) -> str:
    return subprocess.run([GIT, *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """The repository as it is now (tracked and untracked, not ignored), committed afresh."""
    target = tmp_path_factory.mktemp("checkout")
    files = git("ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    for command in (["init", "-q"], ["add", "-A"],
                    ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        git(*command, cwd=target)
    return target


COMMANDS = [
    ["-m", "pyro_vae", "evaluate", "benchmarks/models/default", "-K", "20", "--test-size", "8",
     "--quiet"],
    ["-m", "pyro_vae", "train", "--epochs", "1", "--train-size", "128", "--test-size", "32",
     "--hidden-sizes", "8", "--quiet"],
    ["-m", "pyro_vae", "sample", "benchmarks/models/default", "-n", "4"],
    ["-m", "benchmarks.overhead", "--quick", "--quiet"],
]


@pytest.mark.integration
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[1:3]))
def test_a_command_with_its_default_outputs_leaves_git_status_clean(copy, command):
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *command], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert git("status", "--porcelain", cwd=copy) == ""
    assert any((copy / "runs").iterdir())  # it did write, where git does not look


def test_every_scripts_default_output_folder_is_ignored():
    from benchmarks import common, overhead, threads

    for folder in (common.RESULTS / "x", overhead.DEFAULT_OUT, threads.DEFAULT_OUT,
                   Path("runs") / "meanfield-20261207-000000"):
        assert subprocess.run([GIT, "check-ignore", "-q", str(folder)], cwd=ROOT).returncode == 0


def test_no_tracked_file_holds_a_path_of_this_machine():
    """The checkout's own absolute path (and a home folder's) in a tracked text file would be a
    machine's path in the product."""
    roots = {str(ROOT), str(Path.home())}
    found = []
    for name in filter(None, git("ls-files", "-z").split("\0")):
        path = ROOT / name
        if path.suffix in {".pt", ".png", ".gz", ".npz", ".ipynb"} or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        found += [name for root in roots if root not in ("/", "") and root + "/" in text]
    assert found == []
