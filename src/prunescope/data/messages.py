"""Turn exceptions from other code into text that fits the one-line error contract."""

from __future__ import annotations


def one_line(error: BaseException) -> str:
    """``"TypeName: message"`` with line breaks folded into spaces."""
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text}"
