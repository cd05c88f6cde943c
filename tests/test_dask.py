"""Scale-out: ``pipeline --dask ADDRESS`` decodes on a real Dask cluster.

A scheduler and two single-threaded workers are started with the commands that
docs/scale.md gives (``dask scheduler``, ``dask worker``) on loopback; the
pipeline runs as the user runs it (``python run.py``, a relative ``--out``),
on the cluster, with a local pool of two processes and with one process. The
bundles must be identical: the same files byte for byte, the same metadata, and the same
manifest apart from the flags that say how the run was made.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bundle_compare import assert_same_bundle
from sample_collection import make_collection

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240


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
    """The address of a scheduler with two workers, each one process and one thread."""
    logs = tmp_path_factory.mktemp("dask-logs")
    port, dashboard = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
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
        yield address
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
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "-q", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT)


def test_one_process_two_processes_and_a_dask_cluster_build_the_same_bundle(cluster, tmp_path):
    make_collection(tmp_path / "images", per_cluster=90)  # 270 images: two chunks of 256
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a JPEG")
    common = ["pipeline", "--images", "images", "--metadata", "images.csv", "--id", "c",
              "--cell-size", "32", "--tile-size", "64", "--perplexity", "10",
              "--title", "{name}"]
    local = run_cli(tmp_path, *common, "--out", "local", "--jobs", "2")
    assert local.returncode == 0, local.stderr
    remote = run_cli(tmp_path, *common, "--out", "remote", "--dask", cluster)
    assert remote.returncode == 0, remote.stderr
    assert_same_bundle(tmp_path / "remote" / "c", tmp_path / "local" / "c")
    # One worker process stores the chunks in input order; two finish them in any order.
    single = run_cli(tmp_path, *common, "--out", "single", "--jobs", "1")
    assert single.returncode == 0, single.stderr
    assert_same_bundle(tmp_path / "single" / "c", tmp_path / "local" / "c")
    manifest = (tmp_path / "remote" / "c" / "manifest.json").read_text()
    assert cluster in manifest and '"skipped": 1' in manifest


def test_unreachable_scheduler_is_one_error_line(tmp_path):
    make_collection(tmp_path / "images", per_cluster=2, with_csv=False)
    done = run_cli(tmp_path, "pipeline", "--images", "images", "--id", "c",
                   "--dask", f"tcp://127.0.0.1:{free_port()}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --dask tcp://127.0.0.1:")
    assert not (tmp_path / "output" / "c" / "manifest.json").exists()
