"""Output to a pipe whose reader stops early (``| head``) ends quietly, as Unix tools do:
nothing on stderr and exit 141 (128 + SIGPIPE), in every command that prints to stdout.
A broken pipe that is not stdout's is still reported.

Each test runs the real CLI (``python run.py ...``) with stdout a pipe that the test
closes: after reading a few bytes of an output larger than the pipe's buffer, or before
the command writes anything."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sample_collection import build_bundle

from mosaic.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SIGPIPE_STATUS = 141
LONG_TEXT = 8000  # characters of one metadata value: 36 rows make ~300 KB of CSV
PIPE_BUFFER = 64 * 1024  # Linux's default; the export must not fit in it


@pytest.fixture(scope="module")
def workdir(collection, tmp_path_factory) -> Path:
    """A folder with ``out/big``: the test collection with one long text column."""
    images, csv_path = collection
    root = tmp_path_factory.mktemp("broken_pipe")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    metadata = root / "metadata.csv"
    with open(metadata, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "essay"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "essay": f"{row['name']} " * (LONG_TEXT // 8)})
    assert build_bundle(images, root / "out", "big", metadata=metadata) == 0
    return root


def _env(buffered: bool) -> dict[str, str]:
    """The environment of the CLI: stdout buffered (as a user's is) or not."""
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(cwd: Path, args: list[str], buffered: bool = True) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                            env=_env(buffered), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    """(exit status, stderr) once the CLI ends (its stdout already closed by the test)."""
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err.decode("utf-8", "replace")


def _read_then_close(cwd: Path, args: list[str], n: int, buffered: bool = True,
                     ) -> tuple[bytes, int, str]:
    """Read ``n`` bytes of the CLI's stdout (none: close it at once), as ``| head`` does."""
    proc = _start(cwd, args, buffered)
    head = proc.stdout.read(n) if n else b""
    proc.stdout.close()
    return (head, *_finish(proc))


def _assert_quiet(status: int, err: str) -> None:
    assert err == "", err  # no traceback, no "internal error", no "Exception ignored"
    assert status == SIGPIPE_STATUS


EXPORTS = [["export", "--id", "big", "--out", "out"],
           ["export", "--id", "big", "--out", "out", "--format", "json", "-o", "-"]]


@pytest.mark.parametrize("args", EXPORTS, ids=["csv", "json"])
def test_export_read_in_full_exits_0(workdir, args, tmp_path):
    """The control: a reader that takes it all gets all of it, larger than the pipe."""
    proc = _start(workdir, args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == b""
    assert len(out) > 4 * PIPE_BUFFER
    reference = tmp_path / "export.out"
    fmt = "json" if "json" in args else "csv"
    assert main(["export", "--id", "big", "--out", str(workdir / "out"), "--format", fmt,
                 "-o", str(reference)]) == 0
    assert out == reference.read_bytes()


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("args", EXPORTS, ids=["csv", "json"])
def test_export_to_a_reader_that_stops_early_ends_quietly(workdir, args, buffered):
    head, status, err = _read_then_close(workdir, args, 10, buffered)
    assert head == (b"id,source," if "json" not in args else b'[\n{"id": 0')
    _assert_quiet(status, err)


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("args", [["info", "--id", "big", "--out", "out"],
                                  ["-v", "info", "--id", "big", "--out", "out"],
                                  ["export", "--id", "big", "--out", "out", "-q"]],
                         ids=["info", "info-v", "export-q"])
def test_reader_gone_before_any_output_ends_quietly(workdir, args, buffered):
    """``| true``: the reader leaves before the first write, whatever its size."""
    _, status, err = _read_then_close(workdir, args, 0, buffered)
    _assert_quiet(status, err)


@pytest.mark.parametrize("args", [["--help"], ["export", "--help"], ["--version"]],
                         ids=["help", "export-help", "version"])
def test_help_and_version_to_a_reader_gone_end_quietly(workdir, args):
    """argparse prints these and exits; with stdout unbuffered it ignores a failed
    write itself (exit 0), buffered the write happens in main, which ends quietly."""
    _, status, err = _read_then_close(workdir, args, 0, buffered=True)
    _assert_quiet(status, err)


def test_pipeline_summary_to_a_reader_gone_leaves_a_finished_bundle(workdir, collection):
    """The summary is printed after the bundle is written: the bundle is whole."""
    images, _ = collection
    args = ["pipeline", "--images", os.path.relpath(images, workdir), "--out", "piped",
            "--id", "p", "--jobs", "2", "--cell-size", "32", "--tile-size", "64"]
    _, status, err = _read_then_close(workdir, args, 0)
    _assert_quiet(status, err)
    assert (workdir / "piped" / "p" / "manifest.json").is_file()


BROKEN_OTHER_PIPE = textwrap.dedent("""
    import os, sys
    from mosaic.cli import main as cli

    def run(args):
        read, write = os.pipe()
        os.close(read)
        print("some output")
        with open(write, "wb") as handle:
            handle.write(b"x" * 100)  # EPIPE: a pipe that is not stdout
        return 0

    cli._run = run
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_a_broken_pipe_that_is_not_stdout_is_reported(workdir):
    """A BrokenPipeError from another pipe (a worker that died, a FIFO given to -o) while
    stdout's reader is still there is a failure to report, not the end of the output."""
    proc = subprocess.Popen([sys.executable, "-c", BROKEN_OTHER_PIPE, "info", "--id", "x"],
                            cwd=workdir, env={**_env(True), "PYTHONPATH": str(ROOT)},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert out == b"some output\n"
    assert b"internal error" in err and b"BrokenPipeError" in err
