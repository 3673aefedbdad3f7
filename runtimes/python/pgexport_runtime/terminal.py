"""Text from outside the program, made safe to print on a terminal: the one escaping function both command
lines use for everything they print that they did not write themselves.

Manifest strings, tokenizer output (model answers), file names, prompts and request lines are data. Printed
raw, an escape sequence in them can clear the screen, set the window title or move the cursor, a newline can
forge a line of output ("parity ok: greedy = transformers") or turn a one-line error into two, and a bidi
override can show characters in another order than they are stored. `printable` shows each such character as
a visible escape instead (ESC as \\x1b, a newline as \\n, U+202E as \\u202e); every other character, accents,
scripts and emoji included, is left as it is. JSON output needs none of this: json.dumps escapes control
characters and, with its default ensure_ascii, everything outside ASCII.
"""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls (0x9b is a one-byte CSI on some terminals); the bidi embeddings, overrides,
# isolates and marks; the Unicode line and paragraph separators (line breaks to str.splitlines and some
# terminals); lone surrogates (the undecodable bytes of a file name, which no terminal encoding can print)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: object) -> str:
    """`text` (or str(text)) with every control, bidi-control and line-separator character written as a
    visible escape: one line, shown in the order it is stored, that moves no cursor."""
    return _UNSAFE.sub(_escape, str(text))


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
