"""The server and the viewer over a 1M-item bundle: worker memory, a facet with 500k matches.

``prepare`` gives ``scale_bench.py``'s finished 1M bundle a metadata CSV (a
two-value facet ``half``, so ``half=a`` matches 500,000 items; a 20-value facet
``group``; a ``year``; a three-word ``caption``) by re-running the pipeline
with ``--metadata``: only the metadata stage runs again, the rest is cached.

``run`` starts gunicorn (gthread, like ``make serve``) over the bundle folder
and measures:

- every worker's RSS (all resident pages, and the anonymous ones alone) after
  start, after the viewer's first requests, and after a mix of facet and
  neighbour requests;
- the latency and size of the responses the viewer needs: the collection, the
  grid (4 bytes per cell), the facet counts, ``search?half=a&ids=all`` (the
  500k ids the dimming overlay paints), a keyword search;
- in Chromium (the real viewer): the time to a ready map, the time from setting
  the facet in the URL to the dimmed map, and the frame intervals while the
  view pans and zooms with the overlay on (rAF deltas: median and p95).

    python bench/server_scale_bench.py prepare --work /work/scale --n 1000000
    python bench/server_scale_bench.py run --work /work/scale --n 1000000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from soak_server import free_port, memory_of, start_gunicorn, worker_pids  # noqa: E402

WORDS = [f"w{index:03d}" for index in range(1000)]
CHROMIUM = "/usr/bin/chromium"


def prepare(work: Path, n: int) -> dict:
    list_file = work / f"list-{n}.txt"
    csv_path = work / f"meta-{n}.csv"
    rng = random.Random(0)
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "half", "group", "year", "caption"])
        for index, line in enumerate(open(list_file, encoding="utf-8")):
            writer.writerow([line.strip(), "ab"[index % 2], f"g{index % 20:02d}",
                             1900 + rng.randrange(121), " ".join(rng.sample(WORDS, 3))])
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run.py"), "pipeline", "--images", list_file.name,
                    "--out", "out", "--id", f"scale-{n}", "--metadata", csv_path.name],
                   cwd=work, check=True)
    return {"prepare_s": round(time.perf_counter() - started, 1)}


def fetch(url: str) -> tuple[float, int, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
    return time.perf_counter() - started, len(body), body


def timed(base: str, path: str, repeat: int = 3) -> dict:
    times, size = [], 0
    for _ in range(repeat):
        seconds, size, _ = fetch(base + path)
        times.append(seconds)
    return {"path": path, "median_ms": round(statistics.median(times) * 1000, 1),
            "bytes": size}


def worker_rss(master: int) -> list[dict]:
    """Per worker, MiB: all resident pages, and the anonymous ones (the worker's own heap;
    the rest are file pages of the memory-mapped annoy index, SQLite and grid, shared
    with the page cache and every other worker)."""
    memory = [memory_of(pid) for pid in worker_pids(master)]
    return [{"rss": round(m.rss / 1024), "anon": round(m.rss_anon / 1024)} for m in memory]


def browser(base: str, cid: str) -> dict:
    from playwright.sync_api import sync_playwright

    result = {}
    with sync_playwright() as playwright:
        chrome = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = chrome.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        started = time.perf_counter()
        page.goto(f"{base}/c/{cid}")
        page.wait_for_selector("#viewer[data-ready='true']", timeout=120_000)
        result["ready_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        page.evaluate("() => { window.location.hash = 'half=a'; }")
        page.wait_for_function(
            "() => /500,000|500000/.test(document.getElementById('match-count').textContent)",
            timeout=120_000)
        result["facet_500k_to_dimmed_s"] = round(time.perf_counter() - started, 2)
        result["match_count_text"] = page.inner_text("#match-count")
        # Frame intervals while the view pans and zooms with the 500k mask on.
        deltas = page.evaluate("""async () => {
          const viewer = document.querySelector('#viewer');
          const out = []; let last = performance.now(); let running = true;
          function tick(now) {
            out.push(now - last); last = now;
            if (running) requestAnimationFrame(tick);
          }
          requestAnimationFrame(tick);
          const canvas = viewer.querySelector('.openseadragon-canvas');
          const box = canvas.getBoundingClientRect();
          for (let step = 0; step < 40; step++) {
            canvas.dispatchEvent(new WheelEvent('wheel', {deltaY: step < 20 ? -120 : 120,
              clientX: box.left + box.width / 2 + step * 5, clientY: box.top + box.height / 2,
              bubbles: true}));
            await new Promise((r) => setTimeout(r, 50));
          }
          await new Promise((r) => setTimeout(r, 500));
          running = false;
          return out.slice(1);
        }""")
        deltas.sort()
        result["frames"] = len(deltas)
        result["frame_ms_median"] = round(statistics.median(deltas), 1)
        result["frame_ms_p95"] = round(deltas[int(0.95 * (len(deltas) - 1))], 1)
        result["console_errors"] = errors
        chrome.close()
    return result


def run(work: Path, n: int, workers: int, threads: int) -> dict:
    cid = f"scale-{n}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gunicorn = start_gunicorn(work / "out", port, workers, threads)
    try:
        result: dict = {"n": n, "workers": workers, "threads": threads,
                        "rss_mib_start": worker_rss(gunicorn.pid)}
        collection = json.loads(fetch(f"{base}/api/collections/{cid}")[2])
        grid_path = collection["grid_url"].removeprefix(base)
        requests = [
            timed(base, f"/api/collections/{cid}"),
            timed(base, grid_path),
            timed(base, f"/api/collections/{cid}/facets"),
            timed(base, f"/api/collections/{cid}/search?half=a&limit=50&ids=all"),
            timed(base, f"/api/collections/{cid}/search?group=g07&limit=50&ids=all"),
            timed(base, f"/api/collections/{cid}/search?q=w123&limit=50&ids=all"),
            timed(base, f"/api/collections/{cid}/random?n=50&half=b"),
            timed(base, f"/api/collections/{cid}/items/123456/neighbors?k=20"),
            timed(base, f"/api/collections/{cid}/items/654321"),
        ]
        result["requests"] = requests
        result["rss_mib_after_requests"] = worker_rss(gunicorn.pid)
        result["browser"] = browser(base, cid)
        result["rss_mib_after_browser"] = worker_rss(gunicorn.pid)
        rng = random.Random(1)
        for _ in range(100):
            fetch(f"{base}/api/collections/{cid}/search?group=g{rng.randrange(20):02d}"
                  f"&limit=100&ids=all")
            fetch(f"{base}/api/collections/{cid}/items/{rng.randrange(n)}/neighbors?k=20")
        result["rss_mib_after_mix"] = worker_rss(gunicorn.pid)
    finally:
        gunicorn.send_signal(signal.SIGTERM)
        gunicorn.wait(timeout=30)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "run"):
        command = sub.add_parser(name)
        command.add_argument("--work", type=Path, required=True)
        command.add_argument("--n", type=int, default=1_000_000)
        if name == "run":
            command.add_argument("--workers", type=int, default=2)
            command.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    if args.command == "prepare":
        result = prepare(args.work, args.n)
    else:
        result = run(args.work, args.n, args.workers, args.threads)
        with open(args.work / "server_scale.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
