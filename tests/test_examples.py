"""Every script in examples/ runs in its --quick mode, prints a figure in nats and draws at
least one picture (a PNG) into the folder given by its ``--out``, and nowhere else.

The scripts are found with a glob, so a new example is smoke-tested without editing this file.
Each runs as its own process, the way a reader runs it, with the repository on PYTHONPATH.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

pytestmark = pytest.mark.integration  # scripts and commands run whole (the full tier)

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


def untracked_files() -> set[str] | None:
    """The repository's untracked files that git does not ignore (``git status``'s ``??``
    lines); None where git or the repository is not there."""
    if shutil.which("git") is None:
        return None
    proc = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return None
    return {line[3:] for line in proc.stdout.splitlines() if line.startswith("??")}


def check_picture(path: Path) -> None:
    """``path`` is a PNG that matplotlib reads as an image with something drawn on it."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG file"
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4), (path.name, image.shape)
    assert min(image.shape[:2]) >= 100, f"{path.name} is only {image.shape[:2]} pixels"
    assert image[..., :3].std() > 0.01, f"{path.name} is blank"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_quick_prints_nats_and_draws_into_out(script, tmp_path):
    if script.stem in NEEDS_DATASET and (why := dataset_missing(NEEDS_DATASET[script.stem])):
        pytest.skip(f"{script.name} needs a data set that is not installed: {why}")
    docstring = script.read_text().split('"""')[1] if '"""' in script.read_text() else ""
    assert f"python examples/{script.name} --quick" in docstring, (
        f"{script.name}: its docstring should give the exact --quick command")
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg",
               # one thread per process: the test suite shares its cores with other work,
               # where OpenMP's spinning threads cost several times the work itself
               OMP_NUM_THREADS="1")
    cwd, out = tmp_path / "cwd", tmp_path / "pictures"
    cwd.mkdir()
    before = untracked_files()
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    assert proc.returncode == 0, (
        f"{script.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    assert FIGURE_IN_NATS.search(proc.stdout), (
        f"{script.name} printed no figure in nats:\n{proc.stdout[-2000:]}")
    # its pictures: at least one PNG in --out, each readable and named in what it printed
    pictures = sorted(out.glob("*.png")) if out.is_dir() else []
    assert pictures, f"{script.name} wrote no PNG into --out:\n{proc.stdout[-2000:]}"
    for png in pictures:
        check_picture(png)
        assert str(png) in proc.stdout, f"{script.name} did not print the path of {png.name}"
    # and nothing elsewhere: not in the folder it ran from, not in the repository
    assert not any(cwd.iterdir()), f"{script.name} wrote into its working folder: " \
        f"{sorted(p.name for p in cwd.iterdir())}"
    if before is not None:
        assert untracked_files() - before == set(), (
            f"{script.name} left new files in the repository")


def run_fashion(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "PYRO_VAE_DATA"}
    env.update(PYTHONPATH=str(REPO), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / "examples" / "fashion_mnist.py"),
                           "--quick", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_SECONDS)


def test_fashion_example_without_its_data_set_says_so_in_one_line_and_skips(tmp_path):
    """The optional data set missing (an empty --data-dir stands for a machine without
    Debian's package): one line, exit status 0, no traceback, nothing written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_fashion(tmp_path, "--data-dir", str(empty))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("fashion_mnist.py: skipped: Fashion-MNIST is not installed")
    assert "--download" in lines[0] and proc.stdout == ""


def test_fashion_example_with_a_damaged_file_is_an_error_in_one_line(tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (damaged / stem).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")  # truncated
    proc = run_fashion(tmp_path, "--data-dir", str(damaged))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("fashion_mnist.py: error: ")
    assert "train-images-idx3-ubyte: IDX file has 1 dimensions" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


HELP_OPTION = re.compile(r"^  (-[-\w]+(?:, -[-\w]+)*)( [A-Z_]+.*)?$")


def options_without_default(help_text: str) -> list[str]:
    """The options of an argparse ``--help`` that take a value and do not name a default."""
    missing, current, takes_value, text = [], None, False, ""
    for line in [*help_text.split("options:", 1)[-1].splitlines(), "  -end"]:
        match = HELP_OPTION.match(line)
        if match or not line.startswith("   "):
            if current and takes_value and "default" not in text:
                missing.append(current)
            current, text = (match.group(1), line) if match else (None, "")
            takes_value = bool(match and match.group(2) and match.group(2).split()[0].isupper())
        else:
            text += line
    return missing


def test_options_without_default_finds_one():
    text = "options:\n  -h, --help  show\n  --a A       with (default 1)\n  --b B       none\n"
    assert options_without_default(text) == ["--b"]


@pytest.mark.parametrize("script", EXAMPLES + sorted(
    p for p in (REPO / "benchmarks").glob("*.py") if p.stem not in ("common", "__init__")),
    ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_option_that_takes_a_value_names_its_default(script):
    """Every example's and benchmark's --help, the script run as a file from the repository's
    root with nothing on PYTHONPATH (a benchmark puts the root on sys.path itself), shows each
    option's default."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, text=True,
                          capture_output=True, timeout=60, env={**env, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    assert options_without_default(proc.stdout) == []


@pytest.mark.parametrize("option, value, wanted", [
    ("--labels", "25", "a multiple of 10 in [10, 50000]"),
    ("--dropout", "1", "a number in [0, 1)"),
    ("--lr-decay", "0", "a number in (0, 1]"),
    ("--alpha", "-1", "a number >= 0"),
])
def test_m2_refuses_a_bad_option_in_one_line_naming_it(tmp_path, option, value, wanted):
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "composed_model.py"),
                           option, value, "--out", str(tmp_path / "out")], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=TIMEOUT_SECONDS)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1].split(" (see ")[0]
    assert last.startswith(f"composed_model.py: error: {option} must be {wanted}, got ")
    assert float(last.rsplit(" ", 1)[1]) == float(value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script, arguments, named", [
    ("svi_vae.py", ["--epochs", "0"], "--epochs"),
    ("iwae.py", ["-K", "0"], "-K/--num-particles"),
    ("beta_vae.py", ["--betas", "1", "-1"], "--betas"),
    ("beta_vae.py", ["--warmup", "-1"], "--warmup"),
    ("custom_decoder.py", ["--epochs", "-1"], "--epochs"),
    ("fashion_mnist.py", ["--epochs", "0"], "--epochs"),
    ("composed_model.py", ["--epochs", "0"], "--epochs"),
    ("elbo_identity.py", ["--out", "{file}/sub"], "--out"),
    ("svi_vae.py", ["--out", "{file}/sub"], "--out"),
])
def test_an_example_refuses_a_bad_option_before_any_work(tmp_path, script, arguments, named):
    """One line naming the option, exit status 2, before any training (an --out that cannot be
    written is found before the work, not after it), and no folder left behind."""
    (tmp_path / "file").write_text("not a folder")
    arguments = [a.replace("{file}", str(tmp_path / "file")) for a in arguments]
    out = [] if "--out" in arguments else ["--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, str(REPO / "examples" / script), *arguments, *out],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), proc.stderr
    assert named in lines[0]
    assert not (tmp_path / "out").exists()
