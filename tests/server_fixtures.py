"""Fixtures for the server tests: one small bundle built through the pipeline CLI.

Test modules load them with ``pytest_plugins = ["server_fixtures"]``; the
collection itself is described in server_data.py.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from server_data import write_collection
from werkzeug.serving import WSGIRequestHandler, make_server

from mosaic.cli.main import main as mosaic_main
from server import create_app


@pytest.fixture(scope="session")
def server_bundle(tmp_path_factory) -> Path:
    """The bundle folder ``<out>/test``; ``<out>`` also holds an unfinished and a
    future-schema folder, which the server must ignore."""
    root = tmp_path_factory.mktemp("server")
    csv_path = write_collection(root / "images")
    out = root / "out"
    code = mosaic_main([
        "-q", "pipeline", "--images", str(root / "images"), "--metadata", str(csv_path),
        "--out", str(out), "--id", "test", "--embedding", "raw", "--title", "{name}",
        "--url", "https://example.org/items/{filename}", "--cell-size", "32",
        "--tile-size", "128", "--jobs", "2", "--clusters", "3",
    ])
    assert code == 0
    (out / "unfinished").mkdir()
    (out / "future").mkdir()
    manifest = json.loads((out / "test" / "manifest.json").read_text())
    (out / "future" / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    return out / "test"


@pytest.fixture
def server_app(server_bundle):
    return create_app({"TESTING": True}, out_dir=server_bundle.parent)


@pytest.fixture
def client(server_app):
    return server_app.test_client()


@pytest.fixture(scope="session")
def live_server(server_bundle) -> Iterator[str]:
    """The app on a free loopback port in a thread; yields its base URL."""
    with serving(server_bundle.parent) as url:
        yield url


@contextmanager
def serving(out_dir: Path) -> Iterator[str]:
    """The app over the bundles in ``out_dir`` on a free loopback port in a thread, for
    the ``with`` block; yields its base URL."""
    app = create_app(out_dir=out_dir)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(timeout=5)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:
        pass
