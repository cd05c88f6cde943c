"""Scale-out: ``pipeline --dask ADDRESS`` decodes on a real Dask cluster.

A scheduler and two single-threaded workers are started with the commands that
docs/scale.md gives (``dask scheduler``, ``dask worker``) on loopback; the
pipeline runs as the user runs it (``python run.py``, a relative ``--out``),
on the cluster, with a local pool of two processes and with one process. The
bundles must be identical: the same files byte for byte, the same metadata, and the same
manifest apart from the flags that say how the run was made.

Where the work ran is observed from outside the pipeline: the scheduler's own task
stream (which worker finished each ``decode_chunk`` task) and the decode log of
tests/process_hooks (the pid of the process that decoded each image), against the
workers' pids (``Client.run(os.getpid)``) and the orchestrator's. A worker killed
with SIGKILL while it holds a chunk (held there by the hooks' decode gate, so the
kill lands mid-chunk every time) loses nothing: the run completes and its bundle
equals the uninterrupted one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from bundle_compare import assert_same_bundle
from sample_collection import make_collection

from mosaic.pipeline.collect import collect_inputs
from mosaic.pipeline.decode import CHUNK

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / "tests" / "process_hooks"
TIMEOUT = 240
WAIT = 90  # seconds for any one thing the kill test waits for
N_IMAGES = 270  # two chunks of CHUNK: the first ends at input CHUNK - 1
COMMON = ["pipeline", "--images", "images", "--metadata", "images.csv", "--id", "c",
          "--cell-size", "32", "--tile-size", "64", "--perplexity", "10", "--title", "{name}"]


@dataclass(frozen=True)
class Cluster:
    address: str
    log: Path  # every decode on the cluster and in the orchestrator: "<pid> <path>" lines
    gates: Path  # an image's name as a file here holds its decode (process_hooks)


def child_env(cluster: Cluster | None = None) -> dict[str, str]:
    """The environment of the cluster's and the pipeline's processes: the process hooks
    on the path and, given ``cluster``, its decode log and gates."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HOOKS), str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    env.pop("MOSAIC_TEST_DECODE_LOG", None)
    env.pop("MOSAIC_TEST_DECODE_GATE", None)
    if cluster is not None:
        env.update(MOSAIC_TEST_DECODE_LOG=str(cluster.log),
                   MOSAIC_TEST_DECODE_GATE=str(cluster.gates))
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dask_command() -> list[str]:
    script = Path(sys.executable).with_name("dask")
    if not script.exists():
        pytest.fail(f"the dask command is not installed beside {sys.executable}")
    return [str(script)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler with two workers (each one process and one thread, under a nanny
    that restarts it), all with the decode log and gates of process_hooks."""
    logs = tmp_path_factory.mktemp("dask-logs")
    port, dashboard = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    found = Cluster(address, logs / "decoded.log", logs / "gates")
    found.gates.mkdir()
    env = child_env(found)
    processes = []

    def start(args: list[str], log: str) -> None:
        handle = open(logs / log, "wb")
        processes.append(subprocess.Popen([*dask_command(), *args], cwd=ROOT, env=env,
                                          stdout=handle, stderr=subprocess.STDOUT))

    start(["scheduler", "--host", "127.0.0.1", "--port", str(port),
           "--dashboard-address", f"127.0.0.1:{dashboard}"], "scheduler.log")
    try:
        wait_for_port(port, processes[0], logs / "scheduler.log")
        start(["worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
               "--local-directory", str(logs / "workers")], "workers.log")
        wait_for_workers(address, 2)
        yield found
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGINT)
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"the scheduler did not listen on {port}: {log.read_text(errors='replace')}")


def wait_for_workers(address: str, n: int) -> None:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(n, timeout=90)


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "-q", *args], cwd=cwd,
                          env=child_env(), capture_output=True, text=True, timeout=TIMEOUT)


def start_cli(cluster: Cluster, cwd: Path, *args: str) -> subprocess.Popen:
    """The pipeline CLI started (not awaited), its decodes logged as the workers' are."""
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-q", *args], cwd=cwd,
                            env=child_env(cluster), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> str:
    """Wait for the CLI; its stderr, after asserting it succeeded."""
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, stderr
    return stderr


class Observer:
    """What the cluster did during one run, seen from outside the pipeline: the
    scheduler's task stream and the decode log's lines since the observer started."""

    def __init__(self, cluster: Cluster) -> None:
        from distributed import Client

        self.client = Client(cluster.address, timeout="30s", set_as_default=False)
        self.client.get_task_stream()  # the scheduler records the stream from now on
        self.start = time.time()
        self.log = cluster.log
        self.offset = cluster.log.stat().st_size if cluster.log.exists() else 0

    def worker_pids(self) -> dict[str, int]:
        """Each worker's address and process id, as the worker itself reports it."""
        return self.client.run(os.getpid)

    def chunk_tasks(self) -> list[dict]:
        """The ``decode_chunk`` tasks the workers finished since the start."""
        return [t for t in self.client.get_task_stream(start=self.start)
                if str(t["key"]).startswith("decode_chunk")]

    def decodes(self) -> list[tuple[int, str]]:
        """(pid, image path) of every decode since the start, in log order."""
        if not self.log.exists():
            return []
        with open(self.log, "rb") as handle:
            handle.seek(self.offset)
            lines = handle.read().decode().splitlines()
        return [(int(pid), path) for pid, path in (line.split(" ", 1) for line in lines)]

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """A folder with images/ (N_IMAGES and one broken file: two chunks), images.csv
    and local/c, the bundle a local pool of two processes builds from them."""
    work = tmp_path_factory.mktemp("dask-collection")
    make_collection(work / "images", per_cluster=N_IMAGES // 3)
    (work / "images" / "broken.jpg").write_bytes(b"not a JPEG")
    local = run_cli(work, *COMMON, "--out", "local", "--jobs", "2")
    assert local.returncode == 0, local.stderr
    return work


def test_one_process_two_processes_and_a_dask_cluster_build_the_same_bundle(
        cluster, collection):
    observer = Observer(cluster)
    try:
        workers = observer.worker_pids()
        remote = start_cli(cluster, collection, *COMMON, "--out", "remote",
                           "--dask", cluster.address)
        finish(remote)
        tasks, decodes = observer.chunk_tasks(), observer.decodes()
    finally:
        observer.close()
    assert_same_bundle(collection / "remote" / "c", collection / "local" / "c")
    # Every chunk was one task, finished once, by a worker of the cluster ...
    inputs = collect_inputs(str(collection / "images")).paths
    assert len(tasks) == len({t["key"] for t in tasks}) == -(-len(inputs) // CHUNK) == 2
    assert all(t["status"] == "OK" and t["worker"] in workers for t in tasks), tasks
    # ... and every image was decoded once, in a worker process, none in the orchestrator.
    assert sorted(path for _, path in decodes) == [os.path.abspath(p) for p in inputs]
    assert {pid for pid, _ in decodes} <= set(workers.values())
    assert remote.pid not in {pid for pid, _ in decodes}
    # One worker process stores the chunks in input order; two finish them in any order.
    single = run_cli(collection, *COMMON, "--out", "single", "--jobs", "1")
    assert single.returncode == 0, single.stderr
    assert_same_bundle(collection / "single" / "c", collection / "local" / "c")
    manifest = (collection / "remote" / "c" / "manifest.json").read_text()
    assert cluster.address in manifest and '"skipped": 1' in manifest


def wait_until(what: str, condition, process: subprocess.Popen) -> None:
    """Poll ``condition`` for at most WAIT seconds while the CLI ``process`` runs."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {WAIT} s")
        time.sleep(0.05)


def finished(task: dict) -> float:
    """When a task of the task stream finished computing (the worker's clock)."""
    return max(s["stop"] for s in task["startstops"] if s["action"] == "compute")


def is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, not yet reaped


def test_a_worker_killed_mid_chunk_loses_nothing(cluster, collection):
    inputs = [os.path.abspath(p) for p in collect_inputs(str(collection / "images")).paths]
    held = inputs[CHUNK]  # the first image of the second chunk
    gate = cluster.gates / Path(held).name
    gate.touch()
    observer = Observer(cluster)
    try:
        workers = observer.worker_pids()
        run = start_cli(cluster, collection, *COMMON, "--out", "killed",
                        "--dask", cluster.address)
        bundle = collection / "killed" / "c"
        first_chunk = bundle / "cache" / "decode-work" / "chunk-000000.npz"
        # Wait until the first chunk is stored and a worker holds the second one.
        wait_until("first chunk stored", first_chunk.exists, run)
        wait_until("decode of the held image", lambda: any(
            path == held for _, path in observer.decodes()), run)
        victim = next(pid for pid, path in observer.decodes() if path == held)
        address = next(a for a, pid in workers.items() if pid == victim)
        assert run.poll() is None and not (bundle / "manifest.json").exists()
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        wait_until(f"worker {victim} gone", lambda: not is_alive(victim), run)
        gate.unlink()
        finish(run)
        tasks, decodes, after = observer.chunk_tasks(), observer.decodes(), \
            observer.worker_pids()
    finally:
        gate.unlink(missing_ok=True)
        observer.close()
    assert_same_bundle(bundle, collection / "local" / "c")
    manifest = (bundle / "manifest.json").read_text()
    assert f'"items": {N_IMAGES}' in manifest and '"skipped": 1' in manifest
    # The killed worker finished nothing after the kill; another worker redid its chunk.
    assert len(tasks) == len({t["key"] for t in tasks}) == 2
    assert all(t["status"] == "OK" for t in tasks), tasks
    assert {t["worker"] for t in tasks} <= set(workers) | set(after)
    assert all(finished(t) < killed_at for t in tasks if t["worker"] == address), tasks
    assert any(finished(t) > killed_at and t["worker"] != address for t in tasks), tasks
    assert victim not in after.values()
    second = Counter(pid for pid, path in decodes if path in inputs[CHUNK:])
    assert second[victim] == 1  # the held image, killed before it decoded
    assert sum(second.values()) == len(inputs) - CHUNK + 1
    assert {pid for pid, _ in decodes} <= set(workers.values()) | set(after.values())
    assert run.pid not in {pid for pid, _ in decodes}
    # The first chunk, stored before the kill, was not decoded again.
    assert Counter(path for _, path in decodes if path in inputs[:CHUNK]) == \
        Counter(inputs[:CHUNK])


def test_unreachable_scheduler_is_one_error_line(tmp_path):
    make_collection(tmp_path / "images", per_cluster=2, with_csv=False)
    done = run_cli(tmp_path, "pipeline", "--images", "images", "--id", "c",
                   "--dask", f"tcp://127.0.0.1:{free_port()}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --dask tcp://127.0.0.1:")
    assert not (tmp_path / "output" / "c" / "manifest.json").exists()
