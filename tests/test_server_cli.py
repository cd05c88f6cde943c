"""`python run.py serve`: options, the development server and gunicorn."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from flask import Flask

from mosaic.cli import serve as cli
from mosaic.cli.main import main

pytest_plugins = ["server_fixtures"]

ROOT = Path(__file__).resolve().parent.parent


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.configure_parser(parser)
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_json(url: str, process: subprocess.Popen, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: "
                                 f"{process.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.load(response)
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"no answer from {url} in {timeout} s")


def test_defaults():
    args = parse()
    assert (args.out, args.host, args.port, args.production) == ("output", "127.0.0.1", 5000,
                                                                 False)
    assert args.workers is None and args.threads == 4  # None: the machine's rule
    assert 1 <= cli.default_workers() <= 8
    args = parse("--out", "x", "--host", "0.0.0.0", "--port", "8001", "--production",
                 "--workers", "3")
    assert (args.out, args.host, args.port, args.production, args.workers) == (
        "x", "0.0.0.0", 8001, True, 3)


def test_missing_out_folder_is_an_error(tmp_path, capsys):
    assert main(["serve", "--out", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("Error: --out")


def test_bad_worker_count_is_an_error(tmp_path, capsys):
    assert main(["serve", "--out", str(tmp_path), "--production", "--workers", "0"]) == 2
    assert capsys.readouterr().err.startswith("Error: --workers")


def test_development_server_serves_the_out_folder(server_bundle, monkeypatch):
    seen = {}

    def fake_run(app, host, port, threaded):
        seen.update(app=app, host=host, port=port, threaded=threaded)

    monkeypatch.setattr(Flask, "run", fake_run)
    assert cli.run(parse("--out", str(server_bundle.parent), "--port", "5999")) == 0
    assert (seen["host"], seen["port"], seen["threaded"]) == ("127.0.0.1", 5999, True)
    body = seen["app"].test_client().get("/api/collections").get_json()
    assert [c["id"] for c in body["collections"]] == ["test"]


def run_until_served(command: list[str], port: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        body = wait_for_json(f"http://127.0.0.1:{port}/api/collections", process)
        assert [c["id"] for c in body["collections"]] == ["test"]
        item = wait_for_json(f"http://127.0.0.1:{port}/api/collections/test/items/0/neighbors"
                             "?k=3", process)
        assert len(item["neighbors"]) == 3
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/collections/test/tiles/"
                                    "map_files/0/0_0.jpg") as response:
            assert response.headers["Content-Type"] == "image/jpeg"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


@pytest.mark.slow
def test_production_runs_gunicorn_workers(server_bundle):
    port = free_port()
    run_until_served([sys.executable, "run.py", "serve", "--production", "--out",
                      str(server_bundle.parent), "--port", str(port), "--workers", "2"], port)


@pytest.mark.slow
def test_documented_gunicorn_command_works(server_bundle):
    port = free_port()
    gunicorn = Path(sys.executable).with_name("gunicorn")
    run_until_served([str(gunicorn), "-w", "2", "-b", f"127.0.0.1:{port}",
                      f"server:create_app(out_dir={str(server_bundle.parent)!r})"], port)
