"""Printing user text on a terminal: control characters are shown, never obeyed.

Commit messages, models, tags, metadata, legacy manifests and file names come from users and
from files nobody checked. Printed raw, ``"\\x1b[2J"`` clears the screen, ``"\\r"`` overwrites
what a line said and a file name that is not UTF-8 stops the output with a
``UnicodeEncodeError``. Every human-readable line that carries such text goes through
:func:`escape`; JSON output needs nothing, since JSON escapes control characters itself.
"""

from __future__ import annotations

import unicodedata

__all__ = ["escape"]

#: Shown by their usual backslash names rather than as ``\\xNN``.
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
#: Format characters that reorder or hide text on screen (bidi overrides and isolates).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _shown(ch: str) -> str:
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as os.fsdecode hands it over
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def _unsafe(ch: str) -> bool:
    # Cc: C0 and C1 controls and DEL; Cs: lone surrogates; Zl/Zp: line and paragraph separators.
    return unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI


def escape(text: object, *, keep_newlines: bool = False) -> str:
    """Return ``text`` with every control character written as a visible escape.

    ESC becomes ``\\x1b``, a carriage return ``\\r``, BEL ``\\x07``; C1 controls (``\\x9b``
    starts an escape sequence on some terminals), bidi overrides, line separators and the
    undecodable bytes of non-UTF-8 file names are escaped too. Printable text, including
    non-ASCII letters, is left alone.

    Args:
        text: the text (anything else is converted with ``str``).
        keep_newlines: leave ``\\n`` as a line break (for multi-line messages and error
            text); every other control character is still escaped.

    Returns:
        Text that is safe to print on a terminal.
    """
    s = text if isinstance(text, str) else str(text)
    if s.isprintable() and not any(ch in _BIDI for ch in s):
        return s  # the common case: nothing to do
    return "".join(
        _shown(ch) if _unsafe(ch) and not (keep_newlines and ch == "\n") else ch for ch in s
    )
