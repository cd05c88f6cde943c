"""Every exception mosaic raises on purpose, and what each one means to a user.

One tree, one table: ``STATUS`` maps each class to the CLI's exit code and the
server's HTTP status. The CLI prints ``Error: <message>`` and exits with
``exit_code(error)``; the server answers ``{"ok": false, "error": <message>,
"status": N}`` with ``http_status(error)``. Every message names the file,
flag or parameter at fault and, where it can, what would be valid.

Anything that is not a ``MosaicError`` is a bug: the CLI says so (and shows the
traceback with ``-v``), the server logs it and answers 500.
"""

from __future__ import annotations


class MosaicError(Exception):
    """Base class for the errors a user can act on."""


class UsageError(MosaicError, ValueError):
    """A bad flag, parameter value or input file."""


class MetadataError(UsageError):
    """A metadata CSV that cannot be used."""


class QueryError(UsageError):
    """A search or filter request that cannot be run (a bad parameter or value)."""


class PosterError(UsageError):
    """A poster that cannot be made as asked (paper, size, format, too large)."""


class ImageError(MosaicError):
    """One image that cannot be used; the pipeline skips it and records the reason."""


class BundleError(MosaicError):
    """A bundle that is unfinished, unreadable or of an unknown schema."""


class BundleNotFound(BundleError):
    """No finished bundle with that id under the output folder."""


class LockError(MosaicError):
    """Another pipeline is writing the same bundle."""


# class -> (CLI exit code, HTTP status); the most specific class in an error's MRO wins.
STATUS: dict[type[MosaicError], tuple[int, int]] = {
    MosaicError: (1, 500),
    UsageError: (2, 400),
    ImageError: (1, 422),
    BundleError: (1, 404),  # to the server, a bundle it cannot open is not one it serves
    BundleNotFound: (2, 404),
    LockError: (1, 409),
}


def _status(error: BaseException) -> tuple[int, int]:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return (1, 500)


def exit_code(error: BaseException) -> int:
    """The CLI's exit status for ``error``: 2 for the user's mistakes, 1 otherwise."""
    return _status(error)[0]


def http_status(error: BaseException) -> int:
    """The HTTP status the server answers ``error`` with."""
    return _status(error)[1]
