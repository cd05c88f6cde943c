"""Load benchmark of the server on loopback: wrk against gunicorn and nginx.

Runs gunicorn (``server:create_app``) and nginx (bench/nginx.conf, serving the
same tile files) on 127.0.0.1, then wrk for ``--duration`` seconds per row:
tiles from both, thumbnails, neighbours (k=20) and search from gunicorn, the
API rows also at low concurrency for latency. Before that it measures
neighbour recall@20 of the annoy index against exact search, in process.
Writes a Markdown report (default docs/benchmarks-server.md).

    python bench/load_server.py --bundle output/digits
    python bench/load_server.py --synthetic 100000 --work /tmp/bench-out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from string import Template

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.neighbors import NeighborIndex  # noqa: E402

LUA = """
local paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do paths[#paths + 1] = line end
local i = 0
init = function(args)
  math.randomseed(math.floor(os.clock() * 1e6) + tonumber(tostring({}):sub(8), 16))
  i = math.random(#paths)
end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path, help="an existing bundle folder")
    source.add_argument("--synthetic", type=int, metavar="N",
                        help="build a synthetic N-item bundle (bench/synth_bundle.py)")
    parser.add_argument("--work", type=Path, default=None,
                        help="where --synthetic builds (default: a temp folder)")
    parser.add_argument("--duration", type=int, default=30, help="seconds per wrk run "
                        "(default: %(default)s)")
    parser.add_argument("--connections", type=int, default=16,
                        help="wrk connections (default: %(default)s)")
    parser.add_argument("--latency-connections", type=int, default=2,
                        help="wrk connections for the latency rows (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(2 * (os.cpu_count() or 1) + 1, 8),
                        help="gunicorn workers (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=4,
                        help="gunicorn threads per worker (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks-server.md",
                        help="Markdown report (default: %(default)s)")
    args = parser.parse_args(argv)
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"Error: {tool} is not installed (apt-get install wrk nginx-light)",
                  file=sys.stderr)
            return 2

    with tempfile.TemporaryDirectory(prefix="mosaic-bench-") as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        bundle = args.bundle.resolve() if args.bundle else build_synthetic(args, tmp)
        manifest = json.loads((bundle / "manifest.json").read_text())
        print(f"bundle {bundle} ({manifest['counts']['items']} items)", file=sys.stderr)
        load_before = os.getloadavg()
        threadpool_limits(limits=1, user_api="blas")  # as in each gunicorn worker
        recall = measure_neighbors(bundle, manifest)
        paths = endpoint_paths(bundle, manifest)
        in_process = measure_in_process(bundle, paths)
        rows = run_load(args, bundle, paths, tmp)
        report = render_report(args, bundle, manifest, recall, in_process, rows, load_before)
    args.output.write_text(report)
    print(report)
    return 0


def build_synthetic(args: argparse.Namespace, tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT / "bench"))
    from synth_bundle import build

    work = args.work or tmp / "out"
    folder = work / f"synth{args.synthetic}"
    if (folder / "manifest.json").is_file():
        return folder.resolve()
    return build(work, folder.name, args.synthetic).resolve()


def measure_neighbors(bundle: Path, manifest: dict, sample: int = 300, k: int = 20) -> dict:
    """recall@k of annoy (the manifest's search_k) against exact search, and
    in-process query times of both."""
    spec = manifest["embeddings"][0]
    exact = NeighborIndex(bundle, spec, exact=True)
    annoy = NeighborIndex(bundle, spec, exact=False)
    rng = np.random.default_rng(0)
    ids = rng.choice(manifest["counts"]["items"], size=sample, replace=False).tolist()
    times = {"exact": [], "annoy": []}
    hits = 0
    for item_id in ids:
        started = time.perf_counter()
        truth = exact.query(item_id, k)[0]
        times["exact"].append(time.perf_counter() - started)
        started = time.perf_counter()
        found = annoy.query(item_id, k)[0]
        times["annoy"].append(time.perf_counter() - started)
        hits += len(set(truth.tolist()) & set(found.tolist()))
    return {
        "embedding": spec["name"], "dim": spec["dim"], "metric": spec["metric"],
        "search_k": spec.get("search_k"), "recall": hits / (k * sample), "k": k,
        "sample": sample,
        **{f"{name}_{q}": float(np.percentile(values, p)) * 1000
           for name, values in times.items() for q, p in (("p50", 50), ("p99", 99))},
    }


def endpoint_paths(bundle: Path, manifest: dict) -> dict[str, list[str]]:
    """The request paths of each benchmarked endpoint."""
    cid = bundle.name
    paths = {
        "tiles": tile_paths(bundle, manifest, cid),
        "thumbnails": [f"/collections/{cid}/thumbs/{i}.jpg" for i in
                       random.Random(1).sample(range(manifest["counts"]["items"]),
                                               min(5000, manifest["counts"]["items"]))],
        "neighbours": [f"/api/collections/{cid}/items/{i}/neighbors?k=20" for i in
                       random.Random(2).sample(range(manifest["counts"]["items"]),
                                               min(5000, manifest["counts"]["items"]))],
        "search": search_paths(bundle, manifest, cid),
    }
    paths["search (viewer: ids=all)"] = [p + "&limit=48&ids=all" for p in paths["search"]]
    return paths


def measure_in_process(bundle: Path, paths: dict[str, list[str]], n: int = 400) -> dict:
    """p50/p99 of the API endpoints through Flask's test client: the server's own
    time, without HTTP, gunicorn or a load generator sharing the CPUs."""
    from server import create_app

    client = create_app(out_dir=bundle.parent).test_client()
    result = {}
    for name in ("neighbours", "search", "search (viewer: ids=all)", "thumbnails"):
        client.get(paths[name][0])
        times = []
        for path in paths[name][:n]:
            started = time.perf_counter()
            response = client.get(path)
            times.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{path} answered {response.status_code}")
        result[name] = (float(np.percentile(times, 50)) * 1000,
                        float(np.percentile(times, 99)) * 1000)
    return result


def run_load(args: argparse.Namespace, bundle: Path, paths: dict[str, list[str]],
             tmp: Path) -> list[dict]:
    files = {}
    for name, values in paths.items():
        files[name] = tmp / f"{re.sub(r'[^a-z]+', '_', name)}.txt"
        files[name].write_text("\n".join(values) + "\n")
    script = tmp / "paths.lua"
    script.write_text(LUA)
    c, low = args.connections, args.latency_connections
    plan = [("tiles", "gunicorn", c), ("tiles", "nginx", c), ("thumbnails", "gunicorn", c),
            ("neighbours", "gunicorn", c), ("search", "gunicorn", c),
            ("search (viewer: ids=all)", "gunicorn", c),
            ("neighbours", "gunicorn", low), ("search", "gunicorn", low)]
    rows = []
    with gunicorn(bundle.parent, args.workers, args.threads) as api_url, \
            nginx(bundle, args.workers, tmp) as tile_url:
        bases = {"gunicorn": api_url, "nginx": tile_url}
        for name in paths:  # every kind of path answers, and every worker is warm
            check(api_url + paths[name][0])
        check(tile_url + paths["tiles"][0])
        wrk(api_url, files["neighbours"], script, 2, c, 5)
        for name, server, connections in plan:
            print(f"wrk {name} on {server}, {connections} connections", file=sys.stderr)
            result = wrk(bases[server], files[name], script, 2, connections, args.duration)
            rows.append({"endpoint": name, "server": server, "connections": connections,
                         **result})
    return rows


def tile_paths(bundle: Path, manifest: dict, cid: str, levels: int = 4) -> list[str]:
    """Every tile of the deepest ``levels`` levels, shuffled."""
    top = manifest["tiles"]["levels"] - 1
    found = []
    for level in range(max(0, top - levels + 1), top + 1):
        folder = bundle / "tiles" / "map_files" / str(level)
        found += [f"/collections/{cid}/tiles/map_files/{level}/{p.name}"
                  for p in folder.iterdir()]
    random.Random(0).shuffle(found)
    return found


def search_paths(bundle: Path, manifest: dict, cid: str, n: int = 400) -> list[str]:
    """A mix of keyword, facet, range and combined searches over the bundle's values."""
    rng = random.Random(3)
    conn = sqlite3.connect(bundle / manifest["files"]["metadata"])
    bodies = [r[0] + " " + (r[1] or "") for r in conn.execute(
        "SELECT body, title FROM items_fts ORDER BY rowid LIMIT 2000")]
    words = sorted({w for b in bodies for w in re.findall(r"[a-z]{3,}", b.lower())})
    facets = conn.execute("SELECT name, value FROM facet_values").fetchall()
    numeric = [c["name"] for c in manifest.get("columns", []) if c["kind"] in ("number", "year")]
    from mosaic.store import sql_names

    stored = sql_names(manifest.get("columns", []))
    ranges = {name: conn.execute(f"SELECT MIN({stored[name]}), MAX({stored[name]}) "
                                 "FROM metadata").fetchone() for name in numeric}
    conn.close()
    out = []
    for i in range(n):
        parts = []
        if words and i % 4 in (0, 3):
            parts.append(f"q={rng.choice(words)}")
        if facets and i % 4 in (1, 3):
            name, value = rng.choice(facets)
            parts.append(urllib.parse.urlencode({name: value}))
        if ranges and i % 4 == 2:
            name, (low, high) = rng.choice(sorted(ranges.items()))
            if low is not None:
                start = rng.uniform(low, high)
                parts.append(f"{name}_min={start:.0f}&{name}_max={start + (high - low) / 5:.0f}")
        out.append(f"/api/collections/{cid}/search?" + "&".join(parts or ["q=a"]))
    return out


@contextmanager
def gunicorn(out: Path, workers: int, threads: int):
    port = free_port()
    binary = Path(sys.executable).with_name("gunicorn")
    command = [str(binary), "-w", str(workers), "--threads", str(threads), "-k", "gthread",
               "-b", f"127.0.0.1:{port}", "--log-level", "warning",
               f"server:create_app(out_dir={str(out)!r})"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    with running(command, env) as process:
        url = f"http://127.0.0.1:{port}"
        wait_for(url + "/api/collections", process)
        yield url


@contextmanager
def nginx(bundle: Path, workers: int, tmp: Path):
    port = free_port()
    prefix = tmp / "nginx"
    prefix.mkdir()
    config = Template((ROOT / "bench" / "nginx.conf").read_text()).substitute(
        workers=workers, prefix=prefix, port=port, cid=bundle.name, tiles=bundle / "tiles",
        user="user root;" if os.geteuid() == 0 else "")
    (prefix / "nginx.conf").write_text(config)
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    with running([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]) as process:
        url = f"http://127.0.0.1:{port}"
        wait_for(url + f"/collections/{bundle.name}/tiles/map.dzi", process)
        yield url


@contextmanager
def running(command: list[str], env: dict | None = None):
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no answer from {url}")


def check(url: str) -> None:
    with urllib.request.urlopen(url, timeout=30) as response:
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wrk(base: str, paths: Path, script: Path, threads: int, connections: int,
        duration: int) -> dict:
    output = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
         "-s", str(script), base + "/"],
        env={**os.environ, "WRK_PATHS": str(paths)}, capture_output=True, text=True,
        check=True).stdout
    return parse_wrk(output)


def parse_wrk(output: str) -> dict:
    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    requests = int(re.search(r"(\d+) requests in", output).group(1))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = (sum(int(g) for g in socket_errors.groups()) if socket_errors else 0) + \
        (int(non_2xx.group(1)) if non_2xx else 0)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "p50": latency("50%"), "p99": latency("99%"), "requests": requests,
            "errors": errors}


def render_report(args, bundle: Path, manifest: dict, recall: dict, in_process: dict,
                  rows: list[dict], load_before: tuple[float, float, float]) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    nginx_version = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-v"],
                                   capture_output=True, text=True).stderr.strip()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    wrk_version = wrk_version.splitlines()[0] if wrk_version else "wrk"
    from gunicorn import __version__ as gunicorn_version

    counts = manifest["counts"]
    grid = manifest["grid"]
    lines = [
        "# Server load benchmark",
        "",
        f"Written by `python {' '.join(['bench/load_server.py', *sys.argv[1:]])}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        f"- Machine: {os.cpu_count()} CPUs ({cpu}); load average "
        f"{load_before[0]:.1f} when the run started. Client, gunicorn and nginx share "
        "these CPUs over loopback.",
        f"- Bundle: `{bundle.name}`, {counts['items']:,} items "
        f"({'synthetic, bench/synth_bundle.py' if 'synth' in manifest['program'] else 'pipeline'}),"
        f" grid {grid['n_rows']} x {grid['n_cols']}, cell {grid['cell_size']} px, "
        f"{manifest['tiles']['levels']} tile levels of {manifest['tiles']['tile_size']} px.",
        f"- gunicorn {gunicorn_version}: {args.workers} workers x {args.threads} threads "
        f"(gthread); {nginx_version} with {args.workers} worker processes; {wrk_version}, "
        f"2 threads, {args.duration} s per row.",
        "- Paths: tiles = every tile of the 4 deepest levels in random order; thumbnails and "
        "neighbours (k=20) = 5,000 random items; search = 400 keyword / facet / range / "
        "combined queries (default limit 100); the viewer row adds `&limit=48&ids=all`.",
        "",
        "| endpoint | server | connections | requests/s | p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['endpoint']} | {row['server']} | {row['connections']} | "
                     f"{row['rps']:,.0f} | {row['p50']:.2f} | {row['p99']:.2f} | "
                     f"{row['errors']} |")
    tiles = {r["server"]: r for r in rows if r["endpoint"] == "tiles"}
    ratio = tiles["gunicorn"]["rps"] / tiles["nginx"]["rps"]
    low = {r["endpoint"]: r for r in rows if r["connections"] == args.latency_connections}
    lines += [
        "",
        "## Against the goals",
        "",
        f"- Tiles: gunicorn serves {ratio:.0%} of nginx's rate (goal: at least 50%).",
        f"- Errors: {sum(r['errors'] for r in rows)} in {sum(r['requests'] for r in rows):,} "
        "requests (goal: 0).",
        f"- Neighbours p99: {low['neighbours']['p99']:.2f} ms at {args.latency_connections} "
        f"connections (goal: < 10 ms).",
        f"- Search p99: {low['search']['p99']:.2f} ms at {args.latency_connections} "
        f"connections (goal: < 50 ms).",
        "",
        "## The server's own time (in process, Flask test client, no HTTP)",
        "",
        "| endpoint | p50 ms | p99 ms |",
        "|---|---:|---:|",
        *[f"| {name} | {p50:.2f} | {p99:.2f} |" for name, (p50, p99) in in_process.items()],
        "",
        "## Neighbour recall (in process, no HTTP)",
        "",
        f"Embedding `{recall['embedding']}` ({recall['dim']} dimensions, {recall['metric']}), "
        f"{recall['sample']} random items, k={recall['k']}: annoy with the manifest's "
        f"search_k={recall['search_k']} finds {recall['recall']:.3f} of the exact "
        f"neighbours. Query time p50 / p99: annoy {recall['annoy_p50']:.2f} / "
        f"{recall['annoy_p99']:.2f} ms, exact {recall['exact_p50']:.2f} / "
        f"{recall['exact_p99']:.2f} ms. The server uses exact search up to "
        "`MOSAIC_EXACT_MAX` = 5,000,000 values (items x dimensions), annoy above.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
