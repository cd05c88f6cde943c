"""``python run.py serve``: the development server, or gunicorn with ``--production``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from mosaic.bundle import DEFAULT_OUT
from mosaic.errors import UsageError

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser``."""
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help="folder holding the bundles to serve")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on")
    parser.add_argument("--production", action="store_true",
                        help="run under gunicorn with several worker processes instead of "
                             "Flask's development server")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="gunicorn worker processes with --production "
                             "(default: 2 x number of CPUs + 1, at most 8)")
    parser.add_argument("--threads", type=int, default=4, metavar="N",
                        help="threads per gunicorn worker with --production")


def default_workers() -> int:
    """gunicorn's usual rule, capped: each worker opens its own indexes."""
    return min(2 * (os.cpu_count() or 1) + 1, 8)


def run(args: argparse.Namespace) -> int:
    """Serve ``args.out`` until interrupted; returns the exit code."""
    out = Path(args.out)
    if not out.is_dir():
        raise UsageError(f"--out {out} is not a folder; build a bundle with "
                         "`python run.py pipeline` first")
    workers = default_workers() if args.workers is None else args.workers
    if workers < 1 or args.threads < 1:
        raise UsageError("--workers and --threads must be at least 1")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, not {args.port}")
    if args.production:
        return run_gunicorn(out, args.host, args.port, workers, args.threads)
    from server import create_app

    print(f"Serving {out.resolve()} at http://{args.host}:{args.port}/ "
          "(development server; use --production for gunicorn)", file=sys.stderr)
    create_app(out_dir=out).run(host=args.host, port=args.port, threaded=True)
    return 0


def run_gunicorn(out: Path, host: str, port: int, workers: int, threads: int) -> int:
    """Run the app under gunicorn; each worker builds its own app (and opens its indexes)."""
    from gunicorn.app.base import BaseApplication

    out = out.resolve()

    class Application(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("accesslog", None)
            # gunicorn 27's control socket lives at one path per user ($HOME/.gunicorn):
            # two servers would share it, and nothing here uses it.
            self.cfg.set("control_socket_disable", True)

        def load(self):
            from threadpoolctl import threadpool_limits

            from server import create_app

            # Many requests run at once: one BLAS thread each for exact neighbour search.
            threadpool_limits(limits=1, user_api="blas")
            return create_app(out_dir=out)

    print(f"Serving {out} at http://{host}:{port}/ with gunicorn "
          f"({workers} workers x {threads} threads)", file=sys.stderr)
    Application().run()
    return 0
