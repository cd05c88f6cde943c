"""docs/cli.md must equal the CLI's own --help (regenerate with `make docs`)."""

from pathlib import Path

from mosaic.cli.main import help_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_matches_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert DOC.read_text(encoding="utf-8") == help_markdown(), "run `make docs`"


def test_every_pipeline_flag_shows_its_default():
    text = help_markdown()
    section = text[text.index("## pipeline"):text.index("## export")]
    for flag in ("--cell-size", "--tile-size", "--pca", "--perplexity", "--grid", "--jobs"):
        line = next(line for line in section.splitlines() if line.strip().startswith(flag))
        block = section[section.index(line):section.index(line) + 400]
        assert "(default:" in block, flag
