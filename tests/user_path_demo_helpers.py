"""The ``demo_server`` fixture: ``make demo``'s recipe, run for real and left serving.

A plugin (``pytest_plugins = ["user_path_demo_helpers"]``), so that the session-scoped
fixture is built once and shared by tests/test_user_path.py and the browser tests.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from user_path_helpers import (
    LOOPBACK,
    Server,
    copy_working_tree,
    expand,
    free_port,
    make_recipe,
    run_command,
)


@dataclass
class DemoBuild:
    root: Path             # the working-tree copy the recipe runs in
    serve: list[str]       # the recipe's last command: the server
    port: int
    logs: Path


@dataclass
class Demo:
    root: Path
    server: Server  # the recipe's last command, running
    bundle: Path


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory) -> DemoBuild:
    """``make demo``, command by command: its recipe read from the Makefile, run from the
    root of a copy of the working tree (so nothing is written into the repository), with
    ``$(PY)`` the running Python and ``PORT`` a free one (as ``make demo PORT=...``).
    Every command but the last (the server) is run here, once per session."""
    root = copy_working_tree(tmp_path_factory.mktemp("make-demo") / "mosaic")
    logs = tmp_path_factory.mktemp("make-demo-logs")
    port = free_port()
    variables = {"PY": sys.executable, "HOST": LOOPBACK, "PORT": str(port),
                 "PYTHON": sys.executable, "VENV": str(Path(sys.prefix))}
    commands = [expand(c, variables) for c in make_recipe("demo")]
    assert commands and commands[-1][1:3] == ["run.py", "serve"], (
        f"the demo recipe should end by serving: {commands}")
    for number, argv in enumerate(commands[:-1]):
        run_command(argv, root, timeout=600, log=logs / f"step{number}.log")
    return DemoBuild(root, commands[-1], port, logs)


@pytest.fixture(scope="module")
def demo_server(demo_build) -> Iterator[Demo]:
    """The recipe's last command, started as ``make demo`` starts it, for one test module
    (no server is left running between modules), and stopped after."""
    # The port make would have used was free when the recipe was expanded; take another
    # one if something has taken it since.
    argv, port = list(demo_build.serve), demo_build.port
    if not _port_is_free(port):
        port = free_port()
        argv[argv.index(str(demo_build.port))] = str(port)
    with Server(argv, demo_build.root, port, demo_build.logs / f"serve-{port}.log") as server:
        yield Demo(demo_build.root, server, demo_build.root / "output" / "digits")


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True
