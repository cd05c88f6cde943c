"""Crash and resume (issue 5, part 2).

The pipeline is SIGKILLed inside every stage, then run again; the finished
bundle must equal a clean run's: the same manifest apart from ``created`` and
``timings``, the same items in the same order, the same arrays and grid and
the same tile bytes for the same seed. A killed run must never leave anything
that a reader (or the next run) takes for finished, and a second pipeline on a
bundle that is being written must refuse at once.

Kill points are injected: this file doubles as a wrapper script
(``python tests/test_resume.py KILL_POINT pipeline ...``) that patches one
function of the pipeline to SIGKILL its own process at that point, then runs
the ordinary CLI. One test also kills the plain ``python run.py pipeline``
from outside, when each stage's cache record appears.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sample_collection import make_collection

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
N_IMAGES = 39  # make_collection(per_cluster=13)
N_BROKEN = 2
CHUNK = 8  # decode checkpoint size in the injected runs (the real one is 256)
KILL_AT_DECODE = 2 * CHUNK + 5  # killed while decoding the third chunk
PIPELINE_ARGS = ["--embedding", "raw", "--cell-size", "32", "--jobs", "2", "--perplexity", "5",
                 "--tile-size", "64", "--clusters", "3", "--title", "{name} ({year})"]
# every stage, in the order the pipeline runs them
KILL_POINTS = ["decode", "compact", "layout", "grid", "render", "overview", "index",
               "metadata", "hotspots", "manifest"]
RUN_TIMEOUT = 180


# -- the injector (runs in the child process) ----------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill_point(point: str, bundle: Path, log: Path | None) -> None:
    """Patch the pipeline so this process SIGKILLs itself inside stage ``point``."""
    from mosaic.pipeline import decode, grid, reduce, render, thumbnail
    from mosaic.pipeline import hotspots as clusters
    from mosaic.pipeline import orchestrator as pipeline

    decode.CHUNK = CHUNK
    lock = threading.Lock()
    calls = [0]
    decode_image = thumbnail.decode_image

    def counting_decode(path, *args, **kwargs):
        with lock:
            calls[0] += 1
            if log is not None:
                with open(log, "a", encoding="utf-8", errors="surrogateescape") as handle:
                    handle.write(f"{path}\n")
            if point == "decode" and calls[0] == KILL_AT_DECODE:
                _die()
        return decode_image(path, *args, **kwargs)

    thumbnail.decode_image = counting_decode

    def after(module, name: str, then: Callable[..., None] | None = None) -> None:
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            if then is not None:
                then(*args, **kwargs)
            _die()
            return result

        setattr(module, name, wrapper)

    def before(module, name: str) -> None:
        setattr(module, name, lambda *args, **kwargs: _die())

    def corrupt_tiles(matrix, out_dir, *args, **kwargs) -> None:
        # A half-written tile in the finished pyramid and junk in the temp folder.
        tile = next(Path(out_dir).rglob("*.jpg"))
        tile.write_bytes(tile.read_bytes()[:40])
        junk = Path(str(out_dir) + ".tmp")
        junk.mkdir(exist_ok=True)
        (junk / "map.dzi").write_text("<not finished")

    def partial_ann(*args, **kwargs) -> None:
        (bundle / "embeddings" / ".raw.ann.tmp").write_bytes(b"\0" * 100)

    def half_manifest(path, value) -> None:
        if Path(path).name == "manifest.json":
            text = json.dumps(value)
            Path(path).with_name(".manifest.json.tmp").write_text(text[:len(text) // 2])
            _die()
        write_json_atomic(path, value)

    write_json_atomic = pipeline.write_json_atomic
    if point == "compact":
        after(pipeline, "compact")
    elif point == "layout":
        before(reduce, "layout_2d")
    elif point == "grid":
        after(grid, "assign_grid")
    elif point == "render":
        after(render, "cut_tiles", corrupt_tiles)
    elif point == "overview":
        before(render, "render_overview")
    elif point == "index":
        after(pipeline, "build_annoy", partial_ann)
    elif point == "metadata":
        after(pipeline, "write_metadata_db")
    elif point == "hotspots":
        before(clusters, "find_clusters")
    elif point == "manifest":
        pipeline.write_json_atomic = half_manifest
    elif point == "pause":
        layout_2d = reduce.layout_2d

        def paused(*args, **kwargs):
            (bundle / "paused").touch()
            deadline = time.monotonic() + 60
            while not (bundle / "resume").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            return layout_2d(*args, **kwargs)

        reduce.layout_2d = paused
    elif point not in ("decode", "none"):
        raise SystemExit(f"unknown kill point {point!r}")


def _injected_main(argv: list[str]) -> int:
    """``KILL_POINT pipeline ARGS...``: run the CLI with that kill point installed."""
    from mosaic.cli.main import main

    point, args = argv[0], argv[1:]
    out = Path(args[args.index("--out") + 1])
    bundle = out / args[args.index("--id") + 1]
    log = os.environ.get("MOSAIC_TEST_DECODE_LOG")
    _install_kill_point(point, bundle, Path(log) if log else None)
    return main(args)


# -- helpers (run in the test process) -----------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see docs/reliability.md: spinning OpenMP
    env.pop("MOSAIC_TEST_DECODE_LOG", None)
    return env


def pipeline_args(images: Path, csv_path: Path, out: Path, cid: str = "c") -> list[str]:
    return ["-q", "pipeline", "--images", str(images), "--metadata", str(csv_path),
            "--out", str(out), "--id", cid, *PIPELINE_ARGS]


def run_injected(point: str, args: list[str], log: Path | None = None,
                 ) -> subprocess.CompletedProcess:
    env = child_env()
    if log is not None:
        env["MOSAIC_TEST_DECODE_LOG"] = str(log)
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), point, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


def read_table(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def bundle_files(bundle: Path) -> dict[str, bytes]:
    """Every contract file of a bundle (not cache/, not the lock), by relative path."""
    files = {}
    for path in sorted(bundle.rglob("*")):
        relative = path.relative_to(bundle).as_posix()
        if path.is_dir() or relative.startswith("cache/") or relative == ".lock":
            continue
        data = path.read_bytes()
        if path.name == "vips-properties.xml":  # dzsave stamps the date of writing
            data = b"\n".join(line for line in data.splitlines() if b" date=" not in line)
        files[relative] = data
    return files


def comparable_manifest(bundle: Path) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    for key in ("created", "timings"):
        manifest.pop(key)
    manifest["parameters"].pop("out")
    return manifest


def assert_same_bundle(bundle: Path, clean: Path) -> None:
    assert comparable_manifest(bundle) == comparable_manifest(clean)
    for sql in ("SELECT * FROM items ORDER BY id", "SELECT * FROM metadata ORDER BY id",
                "SELECT * FROM facet_values ORDER BY name, value",
                "SELECT rowid, * FROM items_fts ORDER BY rowid"):
        assert read_table(bundle / "metadata.sqlite", sql) == \
            read_table(clean / "metadata.sqlite", sql), sql
    ours, theirs = bundle_files(bundle), bundle_files(clean)
    ours.pop("metadata.sqlite"), theirs.pop("metadata.sqlite")  # compared by content above
    ours.pop("manifest.json"), theirs.pop("manifest.json")
    assert sorted(ours) == sorted(theirs)
    different = [name for name in ours if ours[name] != theirs[name]]
    assert not different, f"files differ from the clean run: {different[:10]}"


def assert_unfinished(out: Path, cid: str = "c") -> None:
    """A killed run leaves no manifest, so every reader ignores the folder."""
    from mosaic.bundle import list_bundles

    assert not (out / cid / "manifest.json").exists()
    assert list_bundles(out) == []


def leftovers(bundle: Path) -> list[str]:
    """Temp and work files that a finished run must have cleaned up."""
    found = [p for p in bundle.rglob("*") if ".tmp" in p.name]
    found += [p for p in (bundle / "cache").glob("matrix.*")]  # the render stage's matrix
    found += [p for p in [bundle / "cache" / "decode-work"] if p.exists()]
    return sorted(str(p.relative_to(bundle)) for p in found)


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> tuple[Path, Path]:
    """39 images in three clusters, two broken files, and a metadata CSV."""
    root = tmp_path_factory.mktemp("resume")
    csv_path = make_collection(root / "images", per_cluster=13)
    (root / "images" / "broken-empty.png").write_bytes(b"")
    (root / "images" / "broken-text.jpg").write_text("not an image")
    return root / "images", csv_path

@pytest.fixture(scope="module")
def clean(collection, tmp_path_factory) -> Path:
    """A bundle built in one uninterrupted ``python run.py pipeline``."""
    images, csv_path = collection
    out = tmp_path_factory.mktemp("clean")
    done = run_cli(pipeline_args(images, csv_path, out))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "c" / "manifest.json").read_text())
    assert manifest["counts"] == {**manifest["counts"], "inputs": N_IMAGES + N_BROKEN,
                                  "items": N_IMAGES, "skipped": N_BROKEN}
    assert leftovers(out / "c") == []
    return out / "c"

# -- tests ---------------------------------------------------------------------

def test_killed_in_every_stage_resumes_to_the_clean_bundle(collection, clean, tmp_path):
    images, csv_path = collection
    out = tmp_path / "out"
    args = pipeline_args(images, csv_path, out)
    bundle = out / "c"
    for index, point in enumerate(KILL_POINTS):
        log = tmp_path / f"decoded-{point}.log"
        done = run_injected(point, args, log=log)
        assert done.returncode == -signal.SIGKILL, (point, done.returncode, done.stderr)
        assert_unfinished(out)
        if point == "decode":
            # two chunks were checkpointed before the kill, the third was lost
            status = np.load(bundle / "cache" / "decode-work" / "status.npy")
            assert int((status != 0).sum()) == 2 * CHUNK
        if index == 1:
            # the run after the decode kill redid only the unfinished chunks
            decoded = log.read_text().splitlines()
            assert len(decoded) == N_IMAGES + N_BROKEN - 2 * CHUNK
        if index > 1:
            assert not log.exists(), f"{point}: decode ran again"
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert_same_bundle(bundle, clean)
    assert leftovers(bundle) == []

def test_plain_cli_killed_when_each_stage_record_appears(collection, clean, tmp_path):
    """SIGKILL ``python run.py pipeline`` from outside as soon as a stage is recorded,
    so the kill lands early in the next stage; then finish and compare."""
    images, csv_path = collection
    out = tmp_path / "out"
    args = pipeline_args(images, csv_path, out)
    records = out / "c" / "cache"
    killed = []
    for stage in ("decode", "vectors", "layout", "grid", "render", "index-raw",
                  "metadata"):
        record = records / f"{stage}.json"
        if record.exists():
            continue  # an earlier kill came late: this stage is already done
        process = subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT,
                                   env=child_env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        deadline = time.monotonic() + RUN_TIMEOUT
        while not record.exists() and process.poll() is None:
            assert time.monotonic() < deadline, f"no {record.name} in time"
            time.sleep(0.002)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed.append(stage)
        process.communicate(timeout=30)
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, process.stderr
        assert_unfinished(out)
    assert len(killed) >= 3, f"too few kills landed: {killed}"
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert_same_bundle(out / "c", clean)
    assert leftovers(out / "c") == []

def test_truncated_decode_status_is_not_trusted(collection, clean, tmp_path):
    images, csv_path = collection
    out = tmp_path / "out"
    args = pipeline_args(images, csv_path, out)
    assert run_injected("decode", args).returncode == -signal.SIGKILL
    status = out / "c" / "cache" / "decode-work" / "status.npy"
    status.write_bytes(status.read_bytes()[:50])  # a torn write
    log = tmp_path / "decoded.log"
    assert run_injected("none", args, log=log).returncode == 0
    assert len(log.read_text().splitlines()) == N_IMAGES + N_BROKEN  # all redone
    assert_same_bundle(out / "c", clean)

def test_truncated_decode_work_file_is_not_trusted(collection, clean, tmp_path):
    images, csv_path = collection
    out = tmp_path / "out"
    args = pipeline_args(images, csv_path, out)
    assert run_injected("decode", args).returncode == -signal.SIGKILL
    segments = sorted((out / "c" / "cache" / "decode-work").glob("cells-*.seg"))
    assert len(segments) == 2  # one per checkpointed chunk
    with open(segments[0], "r+b") as handle:  # a torn or short cell segment
        handle.truncate(segments[0].stat().st_size // 2)
    log = tmp_path / "decoded.log"
    assert run_injected("none", args, log=log).returncode == 0
    # only the torn segment's chunk was decoded again, with the never-finished rest
    assert len(log.read_text().splitlines()) == N_IMAGES + N_BROKEN - CHUNK
    assert_same_bundle(out / "c", clean)

def test_second_pipeline_on_the_same_bundle_refuses(collection, clean, tmp_path):
    images, csv_path = collection
    out = tmp_path / "out"
    args = pipeline_args(images, csv_path, out)
    bundle = out / "c"
    env = child_env()
    first = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "pause",
                              *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (bundle / "paused").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        before = {p: p.stat().st_mtime_ns for p in bundle.rglob("*") if p.is_file()}
        second = run_cli(args)
        assert second.returncode == 1
        assert second.stderr.startswith("Error: another pipeline is writing")
        assert str(bundle) in second.stderr
        # the refused run touched nothing (the lock file aside)
        after = {p: p.stat().st_mtime_ns for p in bundle.rglob("*") if p.is_file()}
        assert {p: t for p, t in after.items() if p.name != ".lock"} == \
            {p: t for p, t in before.items() if p.name != ".lock"}
    finally:
        (bundle / "resume").touch()
        _, stderr = first.communicate(timeout=RUN_TIMEOUT)
    assert first.returncode == 0, stderr
    (bundle / "paused").unlink()
    (bundle / "resume").unlink()
    assert_same_bundle(bundle, clean)
    # and once the first is done, the bundle is free again: a re-run is all cache
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert_same_bundle(bundle, clean)


if __name__ == "__main__":
    sys.exit(_injected_main(sys.argv[1:]))
