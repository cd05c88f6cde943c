"""Generations of a bundle: change a bundle in place while it is being served.

A command that changes a finished bundle (``run.py remove``) never writes into
it. It makes the next generation beside it, ``<out>/.<id>.next/``: every file
hard-linked from the current one (no copy: a 1M bundle's ~350,000 tiles link in
seconds), then each file it changes written anew and renamed over its link, so
the current generation's files are never touched. The new ``manifest.json``
(``generation`` one more) is written last, and the two folders are exchanged in
one step (``renameat2(RENAME_EXCHANGE)``): a reader sees the old bundle or the
new one, never a mix. What was the bundle is then removed, with the pixels of
whatever the change took out.

``kill -9`` before the exchange leaves the old generation served and a stale
``.next`` folder, which the next command removes and rebuilds; after it, the new
generation is served and the command run again finds its work done and only
removes the old folder. Readers that opened files of the old generation keep
reading them (an open file outlives its name), and reopen the bundle when its
manifest changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def next_folder(directory: Path) -> Path:
    """Where the next generation of the bundle at ``directory`` is made."""
    return directory.with_name(f".{directory.name}.next")


def start(directory: Path, skip: tuple[str, ...] = ()) -> Path:
    """A new generation folder holding hard links to every file of ``directory``
    (except the top-level names in ``skip``); a stale one from a killed run is removed
    first."""
    target = next_folder(directory)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(directory, target, copy_function=os.link,
                    ignore=lambda folder, names: [n for n in names if n in skip]
                    if Path(folder) == directory else [])
    return target


def replace(path: Path, write) -> None:
    """Give ``path`` (a hard link into the served generation) new contents without
    touching the file it links to: ``write(tmp)`` writes a sibling temp file, which is
    then renamed over ``path``."""
    tmp = path.with_name(f".new.{path.name}")  # the suffix kept: libvips saves by it
    tmp.unlink(missing_ok=True)
    write(tmp)
    os.replace(tmp, path)


def exchange(directory: Path, new: Path) -> None:
    """Swap ``new`` into place as ``directory`` in one step; ``new`` then holds the
    previous generation. Where the file system cannot exchange (EINVAL), two renames:
    for a moment the bundle is missing (readers get a 404), never half-changed."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        result = renameat2(_AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(directory),
                           _RENAME_EXCHANGE)
        if result == 0:
            return
        error = ctypes.get_errno()
        if error not in (22, 38):  # EINVAL, ENOSYS: not supported here
            raise OSError(error, os.strerror(error), str(directory))
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(directory, old)
    os.rename(new, directory)
    os.rename(old, new)


def finish(directory: Path) -> None:
    """Remove the previous generation (left in the ``.next`` folder by ``exchange``)."""
    shutil.rmtree(next_folder(directory), ignore_errors=True)
