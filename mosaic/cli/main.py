"""Command line: ``mosaic`` / ``python run.py`` with subcommands.

``get_parser()`` builds the one parser; ``main(argv) -> int`` runs it. One
convention for every command:

- a usage error (argparse's own included) prints one ``Error: ...`` line that
  names the flag and what is valid, and exits 2;
- any other ``MosaicError`` prints one ``Error: ...`` line and exits with its
  code in ``mosaic.errors.STATUS``;
- anything else is a bug: one line that says so and how to see the traceback
  (``-v``), which ``-v`` prints; exit 1;
- standard output that is a pipe whose reader stops early (``| head``) ends the
  command quietly, as Unix tools do: nothing on stderr, exit 141.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import select
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from mosaic import __version__
from mosaic.bundle import DEFAULT_OUT
from mosaic.errors import MosaicError, exit_code

logger = logging.getLogger("mosaic")

# argparse's messages, reworded to say what would be valid.
_REWORDS = [
    (re.compile(r"invalid int value: (.*)"), r"must be a whole number, not \1"),
    (re.compile(r"invalid float value: (.*)"), r"must be a number, not \1"),
    (re.compile(r"invalid choice: (.*) \(choose from (.*)\)"), r"must be one of \2, not \1"),
]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the CLI's error convention: one ``Error:`` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        for pattern, replacement in _REWORDS:
            message = pattern.sub(replacement, message)
        message = message.removeprefix("argument ")
        self.exit(2, f"Error: {self.prog}: {message} (see --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` once: only where the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if action.option_strings and action.nargs != 0:
            return f"{text} (default: %(default)s)".strip()
        return text


def get_parser() -> argparse.ArgumentParser:
    """The parser of every command (imports each command's module, not the heavy libraries)."""
    from mosaic.cli import add, duplicates, pipeline, poster, publish, remove, serve, similar

    parser = ArgumentParser(prog="mosaic", formatter_class=HelpFormatter,
                            description="Turn an image collection into a zoomable "
                            "similarity map.")
    parser.add_argument("--version", action="version", version=f"mosaic {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="log each step; show the traceback of an internal error")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=HelpFormatter)
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        return sub

    pipeline.configure_parser(command("pipeline", "build (or resume) a bundle from images"))
    for name, help_text in (("export", "write one row per item as CSV or JSON"),
                            ("info", "print what a bundle holds")):
        sub = command(name, help_text)
        sub.add_argument("--id", required=True, help="collection id")
        sub.add_argument("--out", default=DEFAULT_OUT, help="folder that holds the bundles")
        if name == "export":
            sub.add_argument("--format", choices=["csv", "json"], default="csv")
            sub.add_argument("-o", "--output",
                             help="file to write, or - for standard output (default: -)")
            sub.add_argument("--layout", metavar="NAME",
                             help="whose row and col to write: a --layout value of the "
                             "pipeline, e.g. category:category (default: similarity)")
    demo = command("demo", "build the demo collection (scikit-learn's digits)")
    demo.add_argument("--out", default=DEFAULT_OUT, help="folder that holds the bundles")
    demo.add_argument("--data", default="demo_data", help="where the demo images are written")
    serve.configure_parser(command("serve", "serve bundles over HTTP with the viewer"))
    poster.configure_parser(command("poster", "export a print-ready poster from a bundle"))
    publish.configure_parser(command("publish", "write a bundle as a static site (no server)"))
    similar.configure_parser(command("similar",
                                     "list a bundle's items most like new images, or a text"))
    duplicates.configure_parser(command("duplicates", "list groups of exact and near "
                                        "duplicates in a bundle"))
    remove.configure_parser(command("remove", "take items out of a bundle (a takedown), "
                                    "without a rebuild"))
    add.configure_parser(command("add", "add new images to a bundle, without a rebuild"))
    return parser


def help_markdown() -> str:
    """Every command's ``--help`` as Markdown: the text of docs/cli.md."""
    os.environ["COLUMNS"] = "100"
    parser = get_parser()
    sections = ["# Command-line reference", "",
                "Generated from `--help` by `make docs`; a test keeps it current.", "",
                "```text", parser.format_help().rstrip(), "```"]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        sections += ["", f"## {name}", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(sections) + "\n"


# The status of a command whose standard output was closed by its reader: 128 + SIGPIPE,
# what the shell reports for a Unix tool that SIGPIPE ends (``set -o pipefail; seq 1000000
# | head -1`` fails with 141), as 130 is 128 + SIGINT. Not 0: the output was cut short,
# and a script that asked for all of it can tell. Not 1: nothing went wrong that an
# ``Error:`` line would explain, and a script that expects ``| head`` can allow 141 only.
STDOUT_CLOSED = 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        if not _stdout_reader_gone():  # another pipe or socket (or stderr): not ours to hide
            raise
        return _stdout_closed()


def _main(argv: Sequence[str] | None) -> int:
    # Idle OpenMP threads (openTSNE, scikit-learn) otherwise spin-wait and, on a
    # few cores, starve the threads doing the work: 10-30 s instead of 1 s.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        args = get_parser().parse_args(argv)
    except SystemExit:  # --help and --version print to stdout: flush it here (see below)
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError:  # a disk full, say: ignored, as argparse ignores its failed writes
            pass
        raise
    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR if quiet
                        else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        status = _run(args)
        # Flush the output here, not at interpreter exit: there a failed write is only
        # "Exception ignored" with status 120 or, with over 4 KiB still buffered, not
        # reported at all (seen with CPython 3.11 running run.py): status 0 for an export
        # that wrote nothing.
        sys.stdout.flush()
        return status
    except MosaicError as error:
        print(f"Error: {error}", file=sys.stderr)
        return exit_code(error)
    except KeyboardInterrupt:
        print("Interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    except Exception as error:  # a bug, not the user's mistake
        if isinstance(error, BrokenPipeError) and _stdout_reader_gone():
            raise  # the reader of stdout has all it wanted: main ends quietly
        if verbose:
            traceback.print_exc()
        where = "" if verbose else "; run it again with -v to see the traceback"
        print(f"Error: internal error (a bug in mosaic {__version__}): "
              f"{type(error).__name__}: {error}{where}. Please report it.", file=sys.stderr)
        return 1


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe (or socket) that its reader has closed.

    Asked of stdout's descriptor, not of the error: a BrokenPipeError does not say
    which pipe broke (its ``filename`` is None for every stream), and one from another
    pipe or socket (a worker process that died, a file given to ``-o`` that is a FIFO,
    a connection of ``serve``) is a failure to report, not the end of the output. A
    pipe's write end with no reader left polls as POLLERR (Linux) or POLLHUP."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # None, closed, or no descriptor
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _stdout_closed() -> int:
    """End quietly after stdout's reader left (https://docs.python.org/3/library/
    signal.html#note-on-sigpipe): stdout now writes to the null device, so the
    interpreter's own flush at exit, of what is still buffered, cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return STDOUT_CLOSED


def _run(args: argparse.Namespace) -> int:
    if args.command == "pipeline":
        from mosaic.cli.pipeline import run
        return run(args)
    if args.command in ("export", "info", "demo"):
        from mosaic.cli import commands
        if args.command == "demo":
            return commands.demo(args, getattr(args, "quiet", False))
        return commands.export(args) if args.command == "export" else commands.info(args)
    if args.command == "serve":
        from mosaic.cli.serve import run
        return run(args)
    if args.command == "poster":
        from mosaic.cli.poster import run
        return run(args)
    if args.command == "publish":
        from mosaic.cli.publish import run
        return run(args)
    if args.command == "duplicates":
        from mosaic.cli.duplicates import run
        return run(args)
    if args.command == "similar":
        from mosaic.cli.similar import run
        return run(args)
    if args.command == "remove":
        from mosaic.cli.remove import run
        return run(args)
    if args.command == "add":
        from mosaic.cli.add import run
        return run(args)
    raise AssertionError(args.command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
