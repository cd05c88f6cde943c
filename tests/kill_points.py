"""Kill points for the commands that change a bundle in place (tests/test_add.py,
tests/test_remove.py): each installs a SIGKILL at one step of a child process, the way
tests/test_resume.py does for the pipeline. A plain module, imported by name."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path


def die(*args, **kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after(module, name: str) -> None:
    """SIGKILL once ``module.name`` has returned."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        original(*args, **kwargs)
        die()

    setattr(module, name, wrapper)


def after_replacements(count: int) -> None:
    """SIGKILL once ``generation.replace`` has renamed ``count`` files into place."""
    from mosaic.pipeline import generation

    replace, calls = generation.replace, [0]

    def counted(path, write):
        replace(path, write)
        calls[0] += 1
        if calls[0] == count:
            die()

    generation.replace = counted


def in_manifest(module) -> None:
    """SIGKILL half way through writing the new manifest (``module.write_json_atomic``)."""
    def half(path, value):
        text = json.dumps(value)
        Path(path).with_name(".manifest.json.tmp").write_text(text[:len(text) // 2])
        die()

    module.write_json_atomic = half
