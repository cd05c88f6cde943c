"""Soak test of the server: mixed load on gunicorn, errors, p99 and worker memory.

Starts gunicorn (``server:create_app``, gthread workers) on 127.0.0.1 over one
bundle, warms it up with the same mix, then runs wrk (bench/mixed.lua) for at
most 60 s with tile, neighbour and search requests. It records the errors
(connect, read, write, timeout and non-2xx statuses), the latency percentiles
and the RSS of every worker after warm-up and at the end; it passes when there
are 0 errors, no worker was replaced and no worker's RSS grew by more than 10%.
The figures go into docs/reliability.md (between the ``soak`` markers) and,
with ``--json``, into a file.

    python bench/soak_server.py --generate 5000      # 5,000 generated images, real pipeline
    python bench/soak_server.py --bundle output/digits --duration 45
    python bench/soak_server.py --synthetic 100000   # bench/synth_bundle.py, no images

Loopback only; needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "mixed.lua"
MAX_DURATION = 60
RSS_GROWTH_LIMIT = 0.10
MIX = {"tile": 60, "neighbors": 20, "search": 20}  # percent of the request list
MARK_BEGIN = "<!-- soak:begin -->"
MARK_END = "<!-- soak:end -->"


@dataclass
class Memory:
    """One worker's memory in KiB, from /proc/<pid>/status."""

    rss: int
    rss_anon: int


@dataclass
class SoakResult:
    command: str
    machine: str
    bundle: str
    n_items: int
    workers: int
    threads: int
    connections: int
    warmup_s: int
    duration_s: int
    mix: dict[str, int]
    requests: int = 0
    requests_per_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    rss_start: dict[int, Memory] = field(default_factory=dict)
    rss_end: dict[int, Memory] = field(default_factory=dict)
    rss_peak: dict[int, int] = field(default_factory=dict)
    workers_replaced: bool = False

    @property
    def total_errors(self) -> int:
        return sum(self.errors.values())

    def growth(self, pid: int) -> float:
        return self.rss_end[pid].rss / self.rss_start[pid].rss - 1

    @property
    def max_growth(self) -> float:
        return max(self.growth(pid) for pid in self.rss_start)

    @property
    def passed(self) -> bool:
        return (self.total_errors == 0 and not self.workers_replaced
                and self.max_growth <= RSS_GROWTH_LIMIT)


# -- the bundle and its requests ---------------------------------------------------


def synthetic_bundle(n: int, work: Path) -> Path:
    """A bundle written directly by bench/synth_bundle.py (no images, no pipeline)."""
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    from synth_bundle import build

    folder = work / f"synth{n}"
    if not (folder / "manifest.json").exists():
        print(f"building a synthetic {n}-item bundle in {folder} ...", file=sys.stderr)
        build(work, folder.name, n)
    return folder


WORDS = ("red green blue amber violet harbour mountain river forest desert city market "
         "portrait garden winter summer night morning bridge tower").split()


def generated_bundle(n: int, work: Path, seed: int = 0) -> Path:
    """``n`` small JPEGs in 12 colour families and a CSV, through ``run.py pipeline``."""
    import csv

    import numpy as np
    import pyvips

    folder = work / f"generated{n}"
    if (folder / "out" / "soak" / "manifest.json").exists():
        return folder / "out" / "soak"
    print(f"generating {n} images and building their bundle in {folder} ...", file=sys.stderr)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 230, (12, 3))
    rows = []
    for i in range(n):
        family = i % len(colours)
        pixels = np.clip(colours[family] + rng.normal(0, 20, (48, 64, 3)), 0, 255)
        name = f"img_{i:06d}.jpg"
        pyvips.Image.new_from_array(pixels.astype(np.uint8), interpretation="srgb").jpegsave(
            str(images / name), Q=80)
        rows.append({"filename": name, "description": " ".join(rng.choice(WORDS, 4)),
                     "category": f"family-{family:02d}", "year": str(rng.integers(1850, 2025))})
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    subprocess.run([sys.executable, "run.py", "-q", "pipeline", "--images", str(images),
                    "--metadata", str(folder / "metadata.csv"), "--title", "{description}",
                    "--out", str(folder / "out"), "--id", "soak", "--embedding", "raw",
                    "--cell-size", "64"], cwd=ROOT, check=True,
                   env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    return folder / "out" / "soak"


def request_lines(bundle: Path, n_lines: int = 6000, seed: int = 0) -> list[str]:
    """``KIND PATH`` lines in the proportions of MIX, shuffled."""
    rng = random.Random(seed)
    manifest = json.loads((bundle / "manifest.json").read_text())
    cid = bundle.name
    n_items = manifest["counts"]["items"]
    tiles_root = bundle / "tiles" / "map_files"
    levels = sorted(int(p.name) for p in tiles_root.iterdir() if p.name.isdigit())
    tiles = [f"/collections/{cid}/tiles/map_files/{level}/{tile.name}"
             for level in levels[-4:] for tile in (tiles_root / str(level)).iterdir()]
    conn = sqlite3.connect(f"file:{bundle / 'metadata.sqlite'}?mode=ro", uri=True)
    try:
        texts = [t for (t,) in conn.execute(
            "SELECT coalesce(title, '') || ' ' || coalesce(body, '') FROM items_fts "
            "ORDER BY rowid LIMIT 300") if t]
    finally:
        conn.close()
    words = sorted({w.strip("()[],.;:'\"").lower() for t in texts for w in t.split()
                    if w.isalpha()} - {""})
    facets = manifest.get("facets", [])
    numeric = [c["name"] for c in manifest.get("columns", []) if c["kind"] in ("year", "number")]
    embedding = manifest["embeddings"][0]["name"]

    def search() -> str:
        base = f"/api/collections/{cid}/search?limit=50"
        choice = rng.random()
        if choice < 0.4 and words:
            return base + "&q=" + "+".join(rng.sample(words, min(2, len(words))))
        if choice < 0.55 and words:
            return base + "&q=" + rng.choice(words)[:3] + "*"
        if choice < 0.8 and facets:
            return base + f"&{facets[0]}=" + _facet_value(bundle, facets[0], rng)
        if numeric:
            low = rng.randint(1850, 2000)
            return base + f"&{numeric[0]}_min={low}&{numeric[0]}_max={low + 20}"
        return base + "&offset=" + str(rng.randrange(n_items))

    makers = {
        "tile": lambda: rng.choice(tiles),
        "neighbors": lambda: (f"/api/collections/{cid}/items/{rng.randrange(n_items)}"
                              f"/neighbors?k=20&embedding={embedding}"),
        "search": search,
    }
    lines = [f"{kind} {makers[kind]()}" for kind, share in MIX.items()
             for _ in range(n_lines * share // 100)]
    rng.shuffle(lines)
    return lines


def _facet_value(bundle: Path, facet: str, rng: random.Random) -> str:
    conn = sqlite3.connect(f"file:{bundle / 'metadata.sqlite'}?mode=ro", uri=True)
    try:
        values = [v for (v,) in conn.execute(
            "SELECT value FROM facet_values WHERE name = ?", (facet,))]
    finally:
        conn.close()
    return urllib.parse.quote(rng.choice(values)) if values else "none"


# -- gunicorn and its workers ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_gunicorn(out: Path, port: int, workers: int, threads: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--threads",
               str(threads), "--worker-class", "gthread", "--bind", f"127.0.0.1:{port}",
               "--log-level", "warning", f"server:create_app(out_dir={str(out)!r})"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/collections", timeout=2):
                pass
            if len(worker_pids(process.pid)) == workers:
                return process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("gunicorn did not come up within 60 s")


def worker_pids(master: int) -> list[int]:
    """The PIDs whose parent is ``master`` (gunicorn's workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name (field 2) may hold spaces; the parent PID follows its ")"
        if int(stat.rsplit(")", 1)[1].split()[1]) == master:
            pids.append(int(entry.name))
    return sorted(pids)


def memory_of(pid: int) -> Memory:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon"):
            fields[name] = int(value.split()[0])
    return Memory(rss=fields["VmRSS"], rss_anon=fields["RssAnon"])


def run_wrk(url: str, paths_file: Path, seconds: int, connections: int, threads: int,
            close: bool = False) -> dict:
    """One wrk run of mixed.lua; ``close`` opens a new connection per request."""
    command = ["wrk", f"--threads={threads}", f"--connections={connections}",
               f"--duration={seconds}s", "--timeout=10s", "--latency", "--script", str(LUA),
               url]
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "SOAK_PATHS": str(paths_file),
                               "SOAK_CLOSE": "1" if close else "0"},
                          timeout=seconds + 60)
    match = re.search(r"^SOAK (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not match:
        raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(match.group(1))


# -- the report ---------------------------------------------------------------------


def markdown(result: SoakResult) -> str:
    latency = result.latency_ms
    lines = [
        MARK_BEGIN,
        f"Measured with `{result.command}` on {result.machine}: gunicorn with "
        f"{result.workers} gthread workers x {result.threads} threads over "
        f"`{result.bundle}` ({result.n_items:,} items), wrk with {result.connections} "
        f"connections for {result.duration_s} s after a {result.warmup_s} s warm-up with "
        f"the same mix ({', '.join(f'{share}% {kind}' for kind, share in result.mix.items())}"
        ").",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {result.requests:,} ({result.requests_per_s:,.0f}/s) |",
        f"| errors (connect, read, write, timeout, non-2xx) | {result.total_errors} "
        f"({', '.join(f'{k} {v}' for k, v in result.errors.items())}) |",
        f"| latency p50 / p90 / p99 / p99.9 / max | {latency['p50']:.1f} / "
        f"{latency['p90']:.1f} / {latency['p99']:.1f} / {latency['p999']:.1f} / "
        f"{latency['max']:.1f} ms |",
    ]
    for pid in sorted(result.rss_start):
        start, end = result.rss_start[pid], result.rss_end[pid]
        lines.append(
            f"| worker {pid}: RSS after warm-up -> end (peak) | {start.rss / 1024:.1f} -> "
            f"{end.rss / 1024:.1f} MiB ({result.growth(pid):+.1%}; peak "
            f"{result.rss_peak[pid] / 1024:.1f} MiB); anonymous {start.rss_anon / 1024:.1f} "
            f"-> {end.rss_anon / 1024:.1f} MiB |")
    lines += [
        f"| workers replaced during the run | {'yes' if result.workers_replaced else 'no'} |",
        f"| verdict | {'PASS' if result.passed else 'FAIL'}: 0 errors and RSS growth "
        f"<= {RSS_GROWTH_LIMIT:.0%} required |",
        MARK_END,
    ]
    return "\n".join(lines)


def write_report(path: Path, result: SoakResult) -> None:
    section = markdown(result)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Load and soak\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


# -- main ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bundle", type=Path, help="a finished bundle folder")
    source.add_argument("--generate", type=int, default=5000, metavar="N",
                        help="generate N images and build their bundle with the pipeline "
                        "(kept in --work for the next run; default: %(default)s)")
    source.add_argument("--synthetic", type=int, metavar="N",
                        help="write an N-item bundle with bench/synth_bundle.py instead")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mosaic-soak",
                        help="where generated bundles are kept (default: %(default)s)")
    parser.add_argument("--duration", type=int, default=45,
                        help=f"measured seconds, at most {MAX_DURATION} (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up seconds "
                        "(default: %(default)s)")
    parser.add_argument("--connections", type=int, default=16,
                        help="wrk connections (default: %(default)s)")
    parser.add_argument("--wrk-threads", type=int, default=2,
                        help="wrk threads (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="gunicorn workers (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=4,
                        help="gunicorn threads per worker (default: %(default)s)")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "reliability.md",
                        help="Markdown file whose soak section is replaced "
                        "(default: %(default)s)")
    parser.add_argument("--no-report", dest="report", action="store_const", const=None,
                        help="do not write the Markdown report")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= MAX_DURATION:
        parser.error(f"--duration must be between 1 and {MAX_DURATION} seconds")
    if not shutil.which("wrk"):
        print("Error: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="mosaic-soak-") as scratch:
        if args.bundle:
            bundle = args.bundle.resolve()
        elif args.synthetic:
            bundle = synthetic_bundle(args.synthetic, args.work)
        else:
            bundle = generated_bundle(args.generate, args.work)
        if not (bundle / "manifest.json").exists():
            print(f"Error: {bundle} is not a finished bundle", file=sys.stderr)
            return 2
        paths_file = Path(scratch) / "requests.txt"
        paths_file.write_text("\n".join(request_lines(bundle)) + "\n")
        n_items = json.loads((bundle / "manifest.json").read_text())["counts"]["items"]
        shown = " ".join(["python bench/soak_server.py", *(argv if argv is not None
                                                             else sys.argv[1:])])
        result = SoakResult(
            command=shown.strip(), machine=f"{platform.machine()}, {os.cpu_count()} CPUs, "
            f"{platform.python_implementation()} {platform.python_version()}",
            bundle=bundle.name, n_items=n_items, workers=args.workers, threads=args.threads,
            connections=args.connections, warmup_s=args.warmup, duration_s=args.duration,
            mix=dict(MIX))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        gunicorn = start_gunicorn(bundle.parent, port, args.workers, args.threads)
        try:
            pids = worker_pids(gunicorn.pid)
            if args.warmup:
                # new connections per request, so that every worker is warmed up
                run_wrk(url, paths_file, args.warmup, args.connections, args.wrk_threads,
                        close=True)
            result.rss_start = {pid: memory_of(pid) for pid in pids}
            result.rss_peak = {pid: m.rss for pid, m in result.rss_start.items()}
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(1.0):
                    for pid in pids:
                        try:
                            result.rss_peak[pid] = max(result.rss_peak[pid], memory_of(pid).rss)
                        except (OSError, KeyError):
                            result.workers_replaced = True

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            figures = run_wrk(url, paths_file, args.duration, args.connections,
                              args.wrk_threads)
            stop.set()
            sampler.join()
            result.workers_replaced |= worker_pids(gunicorn.pid) != pids
            result.rss_end = {pid: memory_of(pid) for pid in pids if Path(f"/proc/{pid}").exists()}
            if set(result.rss_end) != set(pids):
                result.workers_replaced = True
                result.rss_end = {pid: result.rss_end.get(pid, Memory(0, 0)) for pid in pids}
        finally:
            gunicorn.send_signal(signal.SIGTERM)
            try:
                gunicorn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                gunicorn.kill()
        result.requests = figures["requests"]
        result.requests_per_s = figures["requests"] / (figures["duration_us"] / 1e6)
        result.errors = figures["errors"]
        result.latency_ms = {k: v / 1000 for k, v in figures["latency_us"].items()}

    print(markdown(result).replace(MARK_BEGIN, "").replace(MARK_END, "").strip())
    if args.report is not None:
        write_report(args.report, result)
        print(f"wrote {args.report}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps({**asdict(result), "passed": result.passed,
                                         "max_growth": result.max_growth}, indent=2))
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
