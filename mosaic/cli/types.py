"""argparse ``type=`` converters that reuse the library's one parser for each kind of value."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from mosaic.colour import Colour, parse_colour
from mosaic.errors import UsageError


def colour_flag(name: str) -> Callable[[str], Colour]:
    """A ``type=`` for a colour flag: ``mosaic.colour.parse_colour`` with argparse's error."""

    def convert(text: str) -> Colour:
        try:
            return parse_colour(text, name)
        except UsageError as error:
            # argparse prefixes "argument --flag: " itself.
            raise argparse.ArgumentTypeError(str(error).removeprefix(f"{name} ")) from None

    return convert
