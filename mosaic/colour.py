"""Colours as the user writes them: the one parser for every ``--background``-like flag."""

from __future__ import annotations

from mosaic.errors import UsageError

Colour = tuple[int, int, int]

NAMED_COLOURS: dict[str, Colour] = {
    "white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128),
    "gray": (128, 128, 128), "lightgrey": (211, 211, 211), "lightgray": (211, 211, 211),
    "darkgrey": (40, 40, 40), "darkgray": (40, 40, 40), "ivory": (255, 255, 240),
    "cream": (255, 253, 208), "navy": (0, 0, 128),
}


def parse_colour(value: str | Colour | list, name: str = "--background") -> Colour:
    """``#rrggbb``, ``#rgb``, ``r,g,b`` (0-255), a name, or an (r, g, b) sequence -> (r, g, b).

    UsageError naming ``name`` and the valid forms otherwise.

    >>> parse_colour("#ff8000"), parse_colour("10, 20, 30"), parse_colour("white")
    ((255, 128, 0), (10, 20, 30), (255, 255, 255))
    """
    values: list[int] = []
    try:
        if isinstance(value, (tuple, list)):
            values = [int(v) for v in value]
        else:
            word = str(value).strip().lower()
            if word in NAMED_COLOURS:
                return NAMED_COLOURS[word]
            if word.startswith("#") and len(word) in (4, 7):
                digits = word[1:] if len(word) == 7 else "".join(c * 2 for c in word[1:])
                values = [int(digits[i:i + 2], 16) for i in (0, 2, 4)]
            elif not word.startswith("#"):
                values = [int(v) for v in word.split(",")]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise UsageError(
            f"{name} must be #rrggbb, #rgb, R,G,B (0-255) or one of "
            f"{', '.join(sorted(NAMED_COLOURS))}; not {value!r}"
        )
    return (values[0], values[1], values[2])
