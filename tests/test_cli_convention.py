"""One CLI convention: usage errors are one ``Error:`` line and exit 2, bugs say so,
each default is shown once, and nothing in ``--help`` depends on the machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mosaic.cli import main as cli_main
from mosaic.cli.main import get_parser, help_markdown, main

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"


@pytest.mark.parametrize("argv, flag", [
    (["pipeline", "--images", "x", "--cell-size", "abc"], "--cell-size"),
    (["pipeline", "--images", "x", "--fit", "stretch"], "--fit"),
    (["pipeline", "--images", "x", "--background", "nope"], "--background"),
    (["pipeline", "--images", "x", "--perplexity", "many"], "--perplexity"),
    (["pipeline"], "--images"),
    (["serve", "--port", "http"], "--port"),
    (["export", "--id", "x", "--format", "xml"], "--format"),
    (["poster", "--no-such-flag"], "--no-such-flag"),
    (["no-such-command"], "no-such-command"),
])
def test_argparse_errors_are_one_line_exit_2(argv, flag, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), captured.err
    assert flag in lines[0]
    assert "usage:" not in captured.err and captured.out == ""


def test_choices_say_what_is_valid(capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "--images", "x", "--grid", "hexagons"])
    line = capsys.readouterr().err
    assert "rasterfairy" in line and "lap" in line and "hexagons" in line


def test_library_usage_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["info", "--id", "missing", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Error: ") and "missing" in err


def _explode(args):
    raise ValueError("an internal mistake")


def test_internal_error_says_it_is_a_bug_and_how_to_see_the_traceback(monkeypatch, capsys,
                                                                       tmp_path):
    monkeypatch.setattr(cli_main, "_run", _explode)
    assert main(["info", "--id", "x", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bug" in err and "-v" in err and "Traceback" not in err
    assert main(["-v", "info", "--id", "x", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "an internal mistake" in err


def test_each_default_is_shown_once():
    for block in re.split(r"\n(?=  -)", help_markdown()):
        assert block.count("default:") <= 1, block


def test_help_does_not_depend_on_the_machine(monkeypatch):
    """The committed docs/cli.md is what --help says on a 16-core (or 1-core) machine."""
    for cpus in (1, 16, 64):
        monkeypatch.setattr(os, "cpu_count", lambda cpus=cpus: cpus)
        assert help_markdown() == DOC.read_text(encoding="utf-8"), f"{cpus} CPUs"


def test_help_shows_machine_defaults_as_rules():
    text = help_markdown()
    assert "number of CPUs" in text
    for flag in ("--jobs", "--workers"):
        start = text.index(f"  {flag}")
        block = text[start:text.index("\n  -", start + 1)]
        assert not re.search(r"default: \d+\)", block), block
    parser = get_parser()
    args = parser.parse_args(["pipeline", "--images", "x"])
    assert args.jobs is None  # resolved when the pipeline runs, not baked into --help


def test_the_real_cli_prints_one_error_line():
    """The console entry point as a user runs it, in a subprocess from another folder."""
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "pipeline", "--images",
                             "x", "--jobs", "two"], capture_output=True, text=True,
                            cwd="/", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: mosaic pipeline: --jobs: must be a whole number, not 'two' (see --help)"]
