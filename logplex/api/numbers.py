"""Whole numbers in request fields: ``num``, ``Logplex-Msg-Count``, drain ids, Content-Length.

DESIGN section 3. A field is a number only when it is ASCII digits (``str.isdigit`` also
accepts ``²`` and other Unicode digits, which ``int`` then refuses) and no longer than
``int`` converts (Python refuses strings of more than 4,300 digits). Anything else is
``None``, so each endpoint answers ``400`` naming the field instead of a ``500``.
"""

from __future__ import annotations

INT_MAX_STR_DIGITS = 4300  # Python's default limit for int(str)


def parse_whole_number(text: str, *, max_digits: int = INT_MAX_STR_DIGITS) -> int | None:
    """``text``, exactly ASCII digits and at most ``max_digits`` of them, as an int; else None."""
    if not text or len(text) > max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)
