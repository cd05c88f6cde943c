#!/usr/bin/env python
"""Thin entry point: ``python run.py COMMAND ...`` equals the ``mosaic`` console script."""

import sys

from mosaic.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
