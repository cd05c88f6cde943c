"""Make this interpreter (and every subprocess that inherits PYTHONPATH) report
``MOSAIC_FAKE_CPUS`` CPUs, to check that nothing depends on the machine's core
count: ``make test-cpus CPUS=16``."""

import os

_fake = int(os.environ.get("MOSAIC_FAKE_CPUS", "0") or 0)
if _fake > 0:
    os.cpu_count = lambda: _fake  # noqa: E731
