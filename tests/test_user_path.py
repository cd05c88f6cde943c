"""The user's path, run for real: ``run.py pipeline`` then ``run.py serve`` as
subprocesses, with the default relative ``--out output``, and ``make demo``'s recipe.

Every other server test builds its bundles under absolute temp paths and runs the
app in-process, which is how a relative ``--out`` (handed to send_from_directory,
which resolves it against the app's root, not the working directory) shipped
serving a black map: 404 for the DZI, every tile, grid.i32 and overview.jpg.
Here the working directory, the flags and the processes are the user's. Set
``MOSAIC_REPO`` to run these tests against another checkout (e.g. an old commit).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from user_path_helpers import Server, check_served_bundle, make_recipe, run_cli, write_images

pytest_plugins = ["user_path_demo_helpers"]
pytestmark = pytest.mark.timeout(600)

CID = "photos"  # the default id: the image folder's name


@pytest.fixture(scope="module")
def user_bundle(tmp_path_factory) -> dict:
    """``<tmp>/work/project``: ``photos/`` of real images and, built by
    ``run.py pipeline --images photos --embedding raw`` run in ``project`` with every
    other flag at its default, ``output/photos``."""
    project = tmp_path_factory.mktemp("work") / "project"
    n_items = write_images(project / "photos")
    result = run_cli(["pipeline", "--images", "photos", "--embedding", "raw"], cwd=project,
                     log=project.parent / "pipeline.log")
    bundle = project / "output" / CID
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["counts"]["items"] == n_items
    assert manifest["ignored_files"] and manifest["skipped"] == []
    return {"project": project, "bundle": bundle, "n_items": n_items,
            "printed": result.stdout + result.stderr}


def where(user_bundle: dict, case: str) -> tuple[Path, list[str]]:
    """(working directory, --out flags) of each way to point the server at the bundle."""
    project = user_bundle["project"]
    return {
        "default-out": (project, []),                                     # `run.py serve`
        "absolute-out": (project, ["--out", str(project / "output")]),
        "root-cwd-absolute-out": (Path("/"), ["--out", str(project / "output")]),
        "parent-cwd-relative-out": (project.parent, ["--out", f"{project.name}/output"]),
    }[case]


@pytest.mark.parametrize("mode", ["development", "production"])
@pytest.mark.parametrize("case", ["default-out", "absolute-out", "root-cwd-absolute-out",
                                  "parent-cwd-relative-out"])
def test_serve_serves_the_bundle(user_bundle, tmp_path, case, mode):
    cwd, out = where(user_bundle, case)
    flags = ["--production", "--workers", "2", "--threads", "2"] if mode == "production" else []
    with Server.cli([*out, *flags], cwd=cwd, log=tmp_path / "serve.log") as server:
        check_served_bundle(server, CID, user_bundle["bundle"], user_bundle["n_items"])


def test_the_serve_command_the_pipeline_prints_serves_it(user_bundle, tmp_path):
    """The summary ends with the command to serve the bundle; run exactly that, there."""
    match = re.search(r"python run\.py serve(.*)$", user_bundle["printed"], re.MULTILINE)
    if match is None:
        pytest.skip("the pipeline's summary no longer suggests a serve command")
    args = shlex.split(match.group(1))
    with Server.cli(args, cwd=user_bundle["project"], log=tmp_path / "serve.log") as server:
        check_served_bundle(server, CID, user_bundle["bundle"], user_bundle["n_items"])


def test_pipeline_wrote_only_under_the_working_directory(user_bundle):
    project = user_bundle["project"]
    assert sorted(p.name for p in project.iterdir()) == ["output", "photos"]
    assert sorted(p.name for p in (project / "output").iterdir()) == [CID]


def test_make_demo_recipe_is_demo_then_serve():
    """The sequence the demo fixture runs is the Makefile's, read from it."""
    commands = make_recipe("demo")
    assert len(commands) >= 2
    assert commands[0].split()[1:] == ["run.py", "demo"]
    assert commands[-1].split()[1:3] == ["run.py", "serve"]
    assert "--out" not in " ".join(commands)  # the default relative output/, the bug's path


def test_make_demo_serves_the_digits(demo_server):
    bundle = demo_server.bundle
    assert (demo_server.root / "demo_data" / "digits").is_dir()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["counts"]["items"] == 1797
    check_served_bundle(demo_server.server, "digits", bundle, 1797)
