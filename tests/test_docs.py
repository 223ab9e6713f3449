"""The documentation says what the code does: its tables are the registry's, and every command
line it shows parses with the real argument parser."""

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae import cli
from pyro_vae.commands.options import existing_path
from pyro_vae.objectives import capability_table, estimator_table

ROOT = Path(__file__).resolve().parents[1]
# failure_cases.md lists bad command lines on purpose (tests/faults.py runs them)
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md")
                                    if p.name != "failure_cases.md"),
        ROOT / "benchmarks" / "README.md", ROOT / "benchmarks" / "models" / "README.md"]


def between(text: str, marker: str) -> str:
    """The text between ``<!-- marker -->`` and ``<!-- /marker -->``."""
    match = re.search(rf"<!-- {marker} -->\n(.*?)\n<!-- /{marker} -->", text, re.S)
    assert match, f"no <!-- {marker} --> block"
    return match.group(1)


def test_the_readmes_estimator_table_is_the_registrys():
    assert between((ROOT / "README.md").read_text(), "estimator-table") == estimator_table()


def test_the_capability_table_of_the_docs_is_the_registrys():
    assert between((ROOT / "docs" / "models.md").read_text(),
                   "capability-table") == capability_table()


def command_lines(path: Path) -> list[str]:
    """The ``pyro-vae ...`` commands of a Markdown file's code blocks (joined across backslash
    line breaks, without comments), and those run by torchrun; inline code names commands in
    prose, and is left alone."""
    blocks, language, body = [], None, None
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if body is None:
                language, body = line[3:].strip(), []
            else:
                if language in ("", "bash", "sh", "console"):
                    blocks.append("\n".join(body) + "\n")
                body = None
        elif body is not None:
            body.append(line)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip().removeprefix("$ ")
            lines.append(line)
    commands = []
    for line in lines:
        for part in re.split(r"\s*(?:&&|;)\s*", line):
            part = re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", part)  # environment variables
            if not part.startswith(("pyro-vae ", "torchrun ")):
                continue
            words = shlex.split(part)
            if words[:1] == ["pyro-vae"]:
                commands.append(words[1:])
            elif words[:1] == ["torchrun"] and "pyro_vae" in words:
                commands.append(words[words.index("pyro_vae") + 1:])
    return [" ".join(map(shlex.quote, c)) for c in commands if c and "..." not in c
            and not c[0].isupper() and not any(w.startswith(("<", "[")) for w in c)]


def parser() -> argparse.ArgumentParser:
    """The real parser, with paths taken as they are (the docs' run folders need not exist)."""
    p = cli.build_parser()
    for sub in p._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            if action.type is existing_path:
                action.type = Path
    return p


DOC_COMMANDS = [(path.relative_to(ROOT), command) for path in DOCS for command in
                command_lines(path)]


def test_the_docs_show_commands():
    """The README shows its commands (a parse of nothing would prove nothing)."""
    assert sum(path.name == "README.md" and path.parent == Path(".") for path, _ in
               DOC_COMMANDS) >= 4


@pytest.mark.parametrize("path, command", DOC_COMMANDS, ids=[f"{p}: {c}" for p, c in
                                                               DOC_COMMANDS])
def test_every_command_line_of_the_docs_parses(path, command):
    try:
        args = parser().parse_args(shlex.split(command))
    except SystemExit as e:  # --help exits with 0 once it has parsed
        assert e.code == 0, f"{path}: `pyro-vae {command}` does not parse"
        return
    assert args.command in cli.COMMANDS


@pytest.mark.integration
def test_the_documentation_site_builds_without_a_warning(tmp_path):
    """``sphinx-build -W`` of docs/ (the docs extra: ``pip install -e ".[docs]"``): the guides,
    the API reference read from the docstrings, and the tutorial notebook, executed."""
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    html = tmp_path / "html"  # myst-nb writes the executed notebooks beside it, in tmp_path
    build = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html",
                            str(ROOT / "docs"), str(html)], capture_output=True, text=True,
                           timeout=1200)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-6000:]
    for page in ("index.html", "api.html", "tutorial.html"):
        assert (html / page).is_file(), page
    api = (html / "api.html").read_text()
    assert "make_objective" in api and "estimate_log_px" in api
