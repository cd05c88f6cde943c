"""Crash and resume (issue 5, part 2).

The pipeline is SIGKILLed inside every stage, then run again; the finished
bundle must equal a clean run's: the same manifest apart from ``created`` and
``timings``, the same items in the same order, the same arrays and grid and
the same tile bytes for the same seed. A killed run must never leave anything
that a reader (or the next run) takes for finished, and a second pipeline on a
bundle that is being written must refuse at once.

Kill points are injected: this file doubles as a wrapper script
(``python tests/test_resume.py KILL_POINT pipeline ...``) that patches one
function of the orchestrator's process to SIGKILL it at that point, then runs
the ordinary CLI. Images are decoded in worker processes, which die with the
orchestrator; each decode is logged by tests/process_hooks/sitecustomize.py
(``MOSAIC_TEST_DECODE_LOG``), in the workers too. One test also kills the plain
``python run.py pipeline`` from outside, when each stage's cache record appears.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from bundle_compare import assert_same_bundle
from sample_collection import make_collection

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
N_IMAGES = 39  # make_collection(per_cluster=13)
N_BROKEN = 2
CHUNK = 8  # decode chunk size in the injected runs (the real one is 256)
STORED_BEFORE_KILL = 2  # the decode kill lands as the third chunk is about to be stored
# --layout-sample 20 (of 39 items): the large-collection layout (fit a sample, place,
# refine all) runs, and the grid refinement with it, so both resume to the same bundle.
PIPELINE_ARGS = ["--embedding", "raw", "--cell-size", "32", "--jobs", "2", "--perplexity", "5",
                 "--tile-size", "64", "--clusters", "3", "--title", "{name} ({year})",
                 "--layout-sample", "20"]
# every stage, in the order the pipeline runs them
KILL_POINTS = ["decode", "compact", "layout", "grid", "render", "overview", "index",
               "metadata", "hotspots", "regions", "manifest"]
RUN_TIMEOUT = 180


# -- the injector (runs in the child process) ----------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill_point(point: str, bundle: Path) -> None:
    """Patch the pipeline so this process SIGKILLs itself inside stage ``point``."""
    from mosaic.pipeline import decode, grid, reduce, render
    from mosaic.pipeline import hotspots as clusters
    from mosaic.pipeline import orchestrator as pipeline

    decode.CHUNK = CHUNK  # the orchestrator cuts the chunks, so the workers follow
    stored = [0]
    write_chunk = decode._ChunkFiles.write

    def counting_write(self, number, arrays):
        if point == "decode" and stored[0] == STORED_BEFORE_KILL:
            _die()
        stored[0] += 1
        return write_chunk(self, number, arrays)

    decode._ChunkFiles.write = counting_write

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
    elif point == "regions":  # regions.npy and regions.order.i32 written, regions.json not
        write_bytes_atomic = pipeline.write_bytes_atomic

        def order_then_die(path, data) -> None:
            write_bytes_atomic(path, data)
            if Path(path).name == "regions.order.i32":
                _die()

        pipeline.write_bytes_atomic = order_then_die
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
    _install_kill_point(point, bundle)
    return main(args)


# -- helpers (run in the test process) -----------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS / "process_hooks"), str(ROOT),
                                         env.get("PYTHONPATH", "")])
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


def assert_unfinished(out: Path, cid: str = "c") -> None:
    """A killed run leaves no manifest, so every reader ignores the folder."""
    from mosaic.bundle import list_bundles

    assert not (out / cid / "manifest.json").exists()
    assert list_bundles(out) == []


def chunk_files(bundle: Path) -> list[Path]:
    return sorted((bundle / "cache" / "decode-work").glob("chunk-*.npz"))


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
            # two chunks were stored before the kill; the others were lost
            assert len(chunk_files(bundle)) == STORED_BEFORE_KILL
        if index == 1:
            # the run after the decode kill redid only the chunks not stored
            decoded = log.read_bytes().splitlines()
            assert len(decoded) == N_IMAGES + N_BROKEN - STORED_BEFORE_KILL * CHUNK
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

def test_torn_chunk_file_is_decoded_again(collection, clean, tmp_path):
    images, csv_path = collection
    out = tmp_path / "out"
    args = pipeline_args(images, csv_path, out)
    assert run_injected("decode", args).returncode == -signal.SIGKILL
    chunks = chunk_files(out / "c")
    assert len(chunks) == STORED_BEFORE_KILL  # one file per stored chunk
    with open(chunks[0], "r+b") as handle:  # a torn or short chunk file
        handle.truncate(chunks[0].stat().st_size // 2)
    log = tmp_path / "decoded.log"
    assert run_injected("none", args, log=log).returncode == 0
    # only the torn chunk was decoded again, with the never-stored rest
    assert len(log.read_bytes().splitlines()) == \
        N_IMAGES + N_BROKEN - (STORED_BEFORE_KILL - 1) * CHUNK
    assert_same_bundle(out / "c", clean)


def test_chunk_file_of_another_chunk_is_not_trusted(collection, clean, tmp_path):
    images, csv_path = collection
    out = tmp_path / "out"
    args = pipeline_args(images, csv_path, out)
    assert run_injected("decode", args).returncode == -signal.SIGKILL
    first, second = chunk_files(out / "c")
    second.unlink()
    shutil.copy(first, second)  # whole, but it holds the first chunk's inputs
    log = tmp_path / "decoded.log"
    assert run_injected("none", args, log=log).returncode == 0
    assert len(log.read_bytes().splitlines()) == \
        N_IMAGES + N_BROKEN - (STORED_BEFORE_KILL - 1) * CHUNK
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
