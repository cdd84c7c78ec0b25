"""Plain-text output shared by the library and the command line (no dependency, copy-paste friendly)."""

from __future__ import annotations

__all__ = ["table"]


def table(rows: list[list[str]], headers: list[str], max_width: dict[int, int] | None = None) -> str:
    """A plain aligned text table (no dependency, copy-paste friendly)."""
    max_width = max_width or {}
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    for r in cells:
        for i, c in enumerate(r):
            w = max_width.get(i)
            if w and len(c) > w:
                r[i] = c[: w - 1] + "…"
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
