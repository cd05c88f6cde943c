"""Progress bars for per-item loops: shown on a terminal, silent otherwise."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """A context manager around tqdm; ``update(n)`` is a no-op when hidden."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=description, unit="it", leave=False,
                        disable=not self.enabled)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
