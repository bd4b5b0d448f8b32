# -*- test-case-name: tests.content.test_richtext -*-
"""Colours of rich text: CSS Color Level 4 names, ``#rgb`` and ``#rrggbb``."""

from __future__ import annotations

import webcolors

#: CSS Color Level 4's named colours: CSS3's 147 and ``rebeccapurple``
#: (``transparent`` and ``currentcolor`` are not colours here).
NAMES = frozenset(webcolors.names(webcolors.CSS3)) | {"rebeccapurple"}
HEX = frozenset("0123456789abcdefABCDEF")


def is_color(value: str) -> bool:
    """Whether ``value`` is a colour name (any case), ``#rgb`` or ``#rrggbb``."""
    if value.startswith("#"):
        return len(value) in (4, 7) and all(c in HEX for c in value[1:])
    return value.lower() in NAMES
