"""What the user runs, run for real: the CLI as subprocesses, with relative paths.

``python run.py pipeline`` and ``python run.py serve`` are started as separate
processes (``sys.executable``, the repository's own ``run.py``) from a chosen
working directory, and the server is checked over loopback HTTP the way the
viewer uses it: the URLs the API hands out, then the files behind them.

The repository under test is this checkout, or ``$MOSAIC_REPO`` (another
checkout or worktree, e.g. an old commit, to show that these tests catch a bug).

The ``make demo`` fixture, shared by the plain and the browser tests, is in
user_path_demo_helpers.py (a plugin: ``pytest_plugins = ["user_path_demo_helpers"]``).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyvips

REPO = Path(os.environ.get("MOSAIC_REPO") or Path(__file__).resolve().parents[1]).resolve()
RUN_PY = REPO / "run.py"
LOOPBACK = "127.0.0.1"
DZI_NS = "{http://schemas.microsoft.com/deepzoom/2008}"
START_TIMEOUT = 90  # seconds for a server to answer (gunicorn loads numpy, sqlite, annoy)
# What `git clean -X` would remove: never copied into a working-tree copy.
NOT_IN_TREE = {".git", ".venv", "node_modules", "output", "demo_data", "test-artifacts",
               "build", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}

# No proxy, whatever the environment says: all traffic stays on 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def cli_env() -> dict[str, str]:
    """The environment a user's shell would give the CLI, minus settings that would
    redirect it (MOSAIC_OUT) and with idle OpenMP threads not spinning."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 300, log: Path | None = None
            ) -> subprocess.CompletedProcess:
    """``python <repo>/run.py ARGS`` in ``cwd``; fails the test on a non-zero exit."""
    return run_command([sys.executable, str(RUN_PY), *args], cwd, timeout, log)


def run_command(argv: list[str], cwd: Path, timeout: float = 300, log: Path | None = None
                ) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, env=cli_env(), capture_output=True, text=True,
                            timeout=timeout)
    if log is not None:
        log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (
        f"{shlex.join(argv)} (cwd {cwd}) exited with {result.returncode}:\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


# ---------------------------------------------------------------- images


def write_images(folder: Path, n: int = 40) -> int:
    """``n`` small real images in three colour families: PNG (RGB, grey, RGBA) and JPEG,
    of varied sizes and aspect ratios, some in a subfolder; plus one non-image file.
    Returns the number of images."""
    colours = [(210, 50, 40), (40, 190, 70), (50, 70, 210)]
    rng = np.random.default_rng(7)
    for i in range(n):
        family = i % 3
        height, width = int(rng.integers(24, 200)), int(rng.integers(24, 260))
        base = np.array(colours[family], dtype=np.float64) * rng.uniform(0.75, 1.0)
        ramp = np.linspace(-25, 25, width)[None, :, None]
        pixels = base + ramp + rng.normal(0, 10, size=(height, width, 3))
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        kind = ("jpg", "png", "png-grey", "png-alpha", "jpeg")[i % 5]
        sub = folder / ("more" if i % 4 == 3 else "")
        sub.mkdir(parents=True, exist_ok=True)
        image = pyvips.Image.new_from_array(pixels, interpretation="srgb")
        if kind == "png-grey":
            image = image.colourspace("b-w")
        elif kind == "png-alpha":
            alpha = np.full((height, width, 1), 255, np.uint8)
            alpha[: height // 4] = 128
            image = image.bandjoin(pyvips.Image.new_from_array(alpha))
        suffix = kind.split("-")[0]
        image.write_to_file(str(sub / f"img_{i:03d}.{suffix}"))
    (folder / "notes.txt").write_text("not an image\n")
    return n


# ---------------------------------------------------------------- servers


class Server:
    """``argv`` started in ``cwd`` in its own process group; stopped (the whole group,
    gunicorn's workers too) on exit. Output goes to a log file, never a full pipe."""

    def __init__(self, argv: list[str], cwd: Path, port: int, log: Path) -> None:
        self.argv, self.cwd, self.port, self.log = argv, cwd, port, log
        self.base = f"http://{LOOPBACK}:{port}"
        self.process: subprocess.Popen | None = None

    @classmethod
    def cli(cls, args: list[str], cwd: Path, log: Path) -> Server:
        """``python <repo>/run.py serve ARGS --port <free>`` in ``cwd``."""
        port = free_port()
        return cls([sys.executable, str(RUN_PY), "serve", *args, "--port", str(port)],
                   cwd, port, log)

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log, "wb") as handle:
            self.process = subprocess.Popen(self.argv, cwd=self.cwd, env=cli_env(),
                                            stdout=handle, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until ``/api/collections`` answers (any HTTP status counts as an answer)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.describe()} exited with "
                                     f"{self.process.returncode}:\n{self.output()}")
            try:
                with _OPENER.open(f"{self.base}/api/collections", timeout=5):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.25)
        raise AssertionError(f"{self.describe()} did not answer in {timeout} s:\n"
                             f"{self.output()}")

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        # SIGINT: the dev server stops, gunicorn does a quick shutdown of its workers.
        for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # gunicorn workers left behind by a killed master
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def describe(self) -> str:
        return f"`{shlex.join(self.argv)}` (cwd {self.cwd})"

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except OSError:
            return ""


# ---------------------------------------------------------------- HTTP


@dataclass
class Reply:
    url: str
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def http_get(url: str, timeout: float = 30) -> Reply:
    """GET on loopback; HTTP errors are returned, not raised."""
    assert url.startswith(f"http://{LOOPBACK}:"), url
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return Reply(url, response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Reply(url, error.code, dict(error.headers), error.read())


def decode_image(data: bytes) -> pyvips.Image:
    image = pyvips.Image.new_from_buffer(data, "")
    image.avg()  # decode every pixel, not only the header
    return image


@dataclass
class Checks:
    """Every check on a served bundle, collected so one failure does not hide the others."""

    server: Server
    problems: list[str] = field(default_factory=list)

    def get(self, path: str, what: str) -> Reply | None:
        reply = http_get(self.server.base + path)
        if reply.status != 200:
            self.problems.append(f"{what}: GET {path} -> {reply.status} "
                                 f"{reply.body[:160].decode(errors='replace').strip()}")
            return None
        return reply

    def expect(self, condition: bool, message: str) -> bool:
        if not condition:
            self.problems.append(message)
        return condition

    def assert_ok(self) -> None:
        assert not self.problems, (
            f"{self.server.describe()} served the bundle wrongly:\n  "
            + "\n  ".join(self.problems) + f"\nserver output:\n{self.server.output(1500)}")


def check_served_bundle(server: Server, cid: str, bundle: Path, n_items: int) -> None:
    """What the viewer fetches, fetched from ``server``: the collection list, the
    collection, the DZI and a tile from each end of the pyramid, grid.i32, the overview,
    a thumbnail, an item and its neighbours, the viewer page and its scripts; each one
    200 with real content that agrees with the bundle on disk."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["counts"]["items"] == n_items, manifest["counts"]
    grid, tiles = manifest["grid"], manifest["tiles"]
    checks = Checks(server)

    listing = checks.get("/api/collections", "collection list")
    if listing:
        entries = {c["id"]: c for c in listing.json()["collections"]}
        if checks.expect(cid in entries, f"collection list has {sorted(entries)}, not {cid!r}"):
            checks.expect(entries[cid]["n_items"] == n_items,
                          f"collection list says {entries[cid]['n_items']} items")
    reply = checks.get(f"/api/collections/{cid}", "collection")
    if reply is None:
        checks.assert_ok()
    collection = reply.json()
    checks.expect(collection["grid"]["n_rows"] == grid["n_rows"]
                  and collection["grid"]["n_cols"] == grid["n_cols"],
                  f"collection grid {collection['grid']} != manifest {grid}")

    dzi_url = collection["dzi"]
    dzi = checks.get(dzi_url, "DZI")
    if dzi:
        checks.expect(dzi.body == (bundle / tiles["dzi"]).read_bytes(), "DZI differs from disk")
        root = ET.fromstring(dzi.body)
        size = root.find(f"{DZI_NS}Size")
        checks.expect(root.tag == f"{DZI_NS}Image" and size is not None,
                      f"DZI root {root.tag}")
        served = (int(root.get("TileSize")), int(root.get("Overlap")), root.get("Format"),
                  int(size.get("Width")), int(size.get("Height")))
        wanted = (tiles["tile_size"], tiles["overlap"], tiles["format"].replace("jpeg", "jpg"),
                  tiles["width"], tiles["height"])
        checks.expect(served == wanted, f"DZI (TileSize, Overlap, Format, Width, Height) "
                                        f"{served} != manifest {wanted}")
        checks.expect((tiles["width"], tiles["height"]) == (
            grid["n_cols"] * grid["cell_size"], grid["n_rows"] * grid["cell_size"]),
            f"map size {tiles['width']}x{tiles['height']} is not the grid's")
    _check_tiles(checks, dzi_url, bundle, tiles)

    cells = grid["n_rows"] * grid["n_cols"]
    reply = checks.get(collection["grid_url"], "grid")
    if reply:
        checks.expect(len(reply.body) == 4 * cells,
                      f"grid.i32 has {len(reply.body)} bytes, not 4 x {cells}")
        ids = np.frombuffer(reply.body, dtype="<i4")
        placed = np.sort(ids[ids >= 0])
        checks.expect(np.array_equal(placed, np.arange(n_items))
                      and int((ids == -1).sum()) == cells - n_items,
                      "grid.i32 is not a bijection of item ids 0..N-1 onto cells (-1 empty)")
        checks.expect(reply.headers.get("X-Grid-Shape") == f"{grid['n_rows']},{grid['n_cols']}",
                      f"X-Grid-Shape {reply.headers.get('X-Grid-Shape')}")

    overview = manifest["overview"]
    reply = checks.get(f"/collections/{cid}/overview.jpg", "overview")
    if reply:
        image = decode_image(reply.body)
        checks.expect((image.width, image.height) == (overview["width"], overview["height"]),
                      f"overview {image.width}x{image.height} != manifest {overview}")

    item = n_items // 2
    reply = checks.get(collection["thumbnail_url"].replace("{id}", str(item)), "thumbnail")
    if reply:
        image = decode_image(reply.body)
        checks.expect((image.width, image.height) == (grid["cell_size"],) * 2,
                      f"thumbnail is {image.width}x{image.height}")
    reply = checks.get(f"/api/collections/{cid}/items/{item}", "item")
    if reply:
        checks.expect(reply.json()["id"] == item, f"item {reply.json()}")
    reply = checks.get(f"/api/collections/{cid}/items/{item}/neighbors?k=5", "neighbours")
    if reply:
        found = [n["id"] for n in reply.json()["neighbors"]]
        checks.expect(len(found) == 5 and all(0 <= i < n_items for i in found),
                      f"neighbours {found}")

    for path, what, needle in (
            ("/", "collection page", b"<html"),
            (f"/c/{cid}", "viewer page", b"<html"),
            ("/static/js/viewer.js", "viewer script", b"OpenSeadragon"),
            ("/static/openseadragon/openseadragon.min.js", "OpenSeadragon (npm ci in static/)",
             b"OpenSeadragon")):
        reply = checks.get(path, what)
        if reply:
            checks.expect(needle in reply.body[:100_000].replace(b"<HTML", b"<html"),
                          f"{what}: {needle!r} not in {path}")
    checks.assert_ok()


def _check_tiles(checks: Checks, dzi_url: str, bundle: Path, tiles: dict) -> None:
    """The first tile of the deepest level (full resolution) and the 1x1 top level."""
    size, overlap = tiles["tile_size"], tiles["overlap"]
    width, height = tiles["width"], tiles["height"]
    deepest = math.ceil(math.log2(max(width, height)))
    checks.expect(tiles["levels"] == deepest + 1, f"{tiles['levels']} levels, not {deepest + 1}")
    suffix = tiles["format"].replace("jpeg", "jpg")
    base = dzi_url.split("?")[0].removesuffix(".dzi") + "_files"
    on_disk = bundle / tiles["dzi"].removesuffix(".dzi")
    on_disk = on_disk.with_name(on_disk.name + "_files")
    for level, expected in ((deepest, (min(size + overlap, width), min(size + overlap, height))),
                            (0, (1, 1))):
        path = f"{base}/{level}/0_0.{suffix}"
        reply = checks.get(path, f"tile level {level}")
        if reply is None:
            continue
        disk = on_disk / str(level) / f"0_0.{suffix}"
        checks.expect(disk.is_file() and reply.body == disk.read_bytes(),
                      f"tile {path} differs from {disk}")
        image = decode_image(reply.body)
        checks.expect((image.width, image.height) == expected,
                      f"tile {path} is {image.width}x{image.height}, not {expected}")


# ---------------------------------------------------------------- the Makefile


def make_recipe(target: str, makefile: Path | None = None) -> list[str]:
    """The command lines of ``target``'s recipe, continuation lines joined."""
    lines = (makefile or REPO / "Makefile").read_text().splitlines()
    header = re.compile(rf"^{re.escape(target)}\s*:(?![=:])")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    assert start is not None, f"no target {target!r} in the Makefile"
    commands: list[str] = []
    joined = ""
    for line in lines[start + 1:]:
        if not line.startswith("\t") and not joined:
            break
        joined += line.strip()
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        commands.append(joined.lstrip("@-+ "))
        joined = ""
    return commands


def expand(command: str, variables: dict[str, str]) -> list[str]:
    """``$(NAME)`` replaced from ``variables`` (an unknown one fails), then split."""
    def value(match: re.Match) -> str:
        assert match.group(1) in variables, (
            f"the Makefile recipe `{command}` uses $({match.group(1)}); teach the test it")
        return shlex.quote(variables[match.group(1)])

    return shlex.split(re.sub(r"\$[({](\w+)[)}]", value, command))


def copy_working_tree(destination: Path) -> Path:
    """The working tree without what is ignored (venv, node_modules, outputs); the
    installed OpenSeadragon is linked in, as `make install` would have it."""
    shutil.copytree(REPO, destination, symlinks=True, ignore=lambda folder, names: [
        n for n in names if n in NOT_IN_TREE or n.endswith((".egg-info", ".pyc"))])
    modules = REPO / "static" / "node_modules"
    if modules.is_dir():
        (destination / "static" / "node_modules").symlink_to(modules, target_is_directory=True)
    return destination
