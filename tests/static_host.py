"""A static host for published sites in the tests: ``python -m http.server`` on loopback.

A plain module (not conftest.py) so tests import it by a name no other folder shares.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def static_host(folder: Path, ready: str, port: int | None = None) -> Iterator[str]:
    """Serve ``folder`` with ``python -m http.server``; yields ``http://127.0.0.1:PORT/``
    once ``ready`` (a path under it) answers. No server code: what a static host does."""
    port = port or free_port()
    root = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1"], cwd=folder, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(root + ready, timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"http.server did not serve {root + ready}") from None
                time.sleep(0.1)
        yield root
    finally:
        server.terminate()
        server.wait(timeout=10)
