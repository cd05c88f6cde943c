"""``python run.py serve``: the development server, or gunicorn with ``--production``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser``."""
    parser.add_argument("--out", default="output", metavar="DIR",
                        help="folder holding the bundles to serve (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=5000,
                        help="port to listen on (default: %(default)s)")
    parser.add_argument("--production", action="store_true",
                        help="run under gunicorn with several worker processes instead of "
                             "Flask's development server")
    parser.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                        help="gunicorn worker processes with --production "
                             "(default: 2 x CPUs + 1, at most 8: %(default)s)")
    parser.add_argument("--threads", type=int, default=4, metavar="N",
                        help="threads per gunicorn worker with --production "
                             "(default: %(default)s)")


def default_workers() -> int:
    return min(2 * (os.cpu_count() or 1) + 1, 8)


def run(args: argparse.Namespace) -> int:
    """Serve ``args.out`` until interrupted; returns the exit code."""
    out = Path(args.out)
    if not out.is_dir():
        print(f"Error: --out {out} is not a folder; build a bundle with "
              "`python run.py pipeline` first", file=sys.stderr)
        return 2
    if args.workers < 1 or args.threads < 1:
        print("Error: --workers and --threads must be at least 1", file=sys.stderr)
        return 2
    if args.production:
        return run_gunicorn(out, args.host, args.port, args.workers, args.threads)
    from server import create_app

    print(f"Serving {out.resolve()} at http://{args.host}:{args.port}/ "
          "(development server; use --production for gunicorn)", file=sys.stderr)
    create_app(out_dir=out).run(host=args.host, port=args.port, threaded=True)
    return 0


def run_gunicorn(out: Path, host: str, port: int, workers: int, threads: int) -> int:
    """Run the app under gunicorn; each worker builds its own app (and opens its indexes)."""
    from gunicorn.app.base import BaseApplication

    class Application(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("accesslog", None)

        def load(self):
            from threadpoolctl import threadpool_limits

            from server import create_app

            # Many requests run at once: one BLAS thread each for exact neighbour search.
            threadpool_limits(limits=1, user_api="blas")
            return create_app(out_dir=out)

    print(f"Serving {out.resolve()} at http://{host}:{port}/ with gunicorn "
          f"({workers} workers x {threads} threads)", file=sys.stderr)
    Application().run()
    return 0
