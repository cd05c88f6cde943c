"""What the stage benches add to every result and how they report it: one JSON line
on stdout and, with ``--results``, appended to a file in docs/data/."""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path


def report(result: dict, results: Path | None) -> None:
    """Print ``result`` with this process's peak RSS, the machine and the command line,
    and append it to ``results`` if given."""
    result = {**result,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
              "machine": f"{os.uname().machine}, {os.cpu_count()} CPUs",
              "command": " ".join(["python", *sys.argv])}
    print(json.dumps(result))
    if results:
        with open(results, "a") as handle:
            handle.write(json.dumps(result) + "\n")
