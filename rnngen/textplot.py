"""A small text chart of perplexity per epoch, for the end of ``rnngen info``.

One column per history entry (a few characters wide when there is room; several entries
to a column, each showing the lowest of them, when there are more entries than columns),
drawn as bars of Unicode eighth blocks or, with ``ascii=True``, of ASCII characters. The
top and bottom rows are labelled with the highest and lowest value drawn, a range wider
than 3x is drawn on a log scale (so the late, flat part of a run stays readable), and the
best entry's column is marked on the axis. Valid perplexity is drawn when the history has
it, train perplexity (and a note saying so) when it does not. A column whose entries are
all infinite (a diverged epoch) shows an infinity mark at the top, NaN a question mark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# A range of values wider than this ratio is drawn on a log scale (here and by rnngen plot).
LOG_SCALE_SPAN = 3.0

_CHARS = {False: {"blocks": " ▁▂▃▄▅▆▇█", "inf": "∞", "nan": "?", "tick": "┤", "side": "│", "corner": "└",
                  "axis": "─", "best": "▲"},
          True: {"blocks": " ..::ooo#", "inf": "^", "nan": "?", "tick": "+", "side": "|", "corner": "+",
                 "axis": "-", "best": "^"}}


def text_curve(history: Sequence[dict], width: int = 60, height: int = 8, ascii: bool = False) -> str:
    """The chart as lines of text (newline-terminated), or "" when no entry has a perplexity.

    ``history`` is a checkpoint's history (or metrics records: entries with ``valid_ppl``,
    ``train_ppl`` and ``epoch``); ``width`` is the most columns the bars take, ``height``
    the rows.
    """
    key = "valid_ppl" if any(h.get("valid_ppl") is not None for h in history) else "train_ppl"
    points = [h for h in history if h.get(key) is not None]
    if not points or width < 1 or height < 1:
        return ""
    groups = _groups(len(points), width)
    values = [_column_value([points[i][key] for i in g]) for g in groups]
    finite = [v for v in values if math.isfinite(v)]
    log = bool(finite) and min(finite) > 0 and max(finite) / min(finite) > LOG_SCALE_SPAN
    best = min((i for i, h in enumerate(points) if math.isfinite(h[key])), key=lambda i: points[i][key], default=None)
    cell = min(3, width // len(groups))
    chars = _CHARS[ascii]
    title = ("valid ppl" if key == "valid_ppl" else "train ppl (no valid ppl recorded)") + " by epoch"
    if log:
        title += ", log scale"
    if best is not None:
        title += f"; best {_fmt(points[best][key])} at epoch {_epoch(points[best])}"
    rows = _bars(values, finite, log, height, cell, chars)
    best_col = None if best is None else next(j for j, g in enumerate(groups) if best in g)
    ends = [_epoch(points[0])] + ([_epoch(points[-1])] if len(points) > 1 else [])
    lines = [title] + _frame(rows, finite, best_col, cell, chars, ends)
    if any(not math.isfinite(v) for v in values):
        lines.append(f"{chars['inf']} infinite (diverged), {chars['nan']} not a number")
    return "".join(line.rstrip() + "\n" for line in lines)


def _groups(n: int, width: int) -> list[range]:
    """Entry indices per column: one each while they fit, else ``width`` near-equal runs."""
    if n <= width:
        return [range(i, i + 1) for i in range(n)]
    return [range(j * n // width, (j + 1) * n // width) for j in range(width)]


def _column_value(values: list[float]) -> float:
    """The lowest finite value; inf when all are +inf; nan when none is a usable number."""
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        return min(finite)
    return math.inf if math.inf in values else math.nan


def _bars(values: list[float], finite: list[float], log: bool, height: int, cell: int, chars: dict) -> list[str]:
    """The chart's rows, top first: each column a bar ``cell`` characters wide whose height
    in eighths of a row goes from 1 (lowest value) to ``8 * height`` (highest)."""
    scale = math.log if log else float
    lo, hi = (scale(min(finite)), scale(max(finite))) if finite else (0.0, 0.0)
    top = 8 * height
    levels = [None if not math.isfinite(v) else top if hi == lo else
              1 + round((scale(v) - lo) / (hi - lo) * (top - 1)) for v in values]
    rows = []
    for r in range(height - 1, -1, -1):
        row = ""
        for v, level in zip(values, levels):
            if level is None:
                mark = chars["inf"] if v == math.inf else chars["nan"]
                row += (mark if r == height - 1 else " ") * cell
            else:
                row += chars["blocks"][min(max(level - 8 * r, 0), 8)] * cell
        rows.append(row)
    return rows


def _frame(rows: list[str], finite: list[float], best_col: int | None, cell: int, chars: dict,
           ends: list[str]) -> list[str]:
    """Value labels and ticks on the left, the axis with the best column marked, and the
    first and last epoch under the ends."""
    top, bottom = (_fmt(max(finite)), _fmt(min(finite))) if finite else ("", "")
    if top == bottom:
        bottom = ""
    pad = max(len(top), len(bottom))
    out = []
    for i, row in enumerate(rows):
        label = top if i == 0 else bottom if i == len(rows) - 1 else ""
        out.append(f"{label:>{pad}} {chars['tick'] if label else chars['side']}{row}")
    axis = [chars["axis"]] * len(rows[0])
    if best_col is not None:
        axis[best_col * cell + cell // 2] = chars["best"]
    out.append(" " * pad + " " + chars["corner"] + "".join(axis))
    first, last = ends[0], ends[-1]
    span = len(rows[0])
    out.append(" " * (pad + 2) + (first if len(ends) == 1 or span <= len(first) + len(last)
                                  else first + last.rjust(span - len(first))))
    return out


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 10000 else f"{value:.2f}"


def _epoch(entry: dict) -> str:
    """An entry's epoch as `info` shows it: whole epochs as integers, a part epoch with a star."""
    e = entry.get("epoch")
    text = "?" if e is None else str(int(e)) if float(e).is_integer() else f"{e:.2f}"
    return text + ("*" if entry.get("partial") else "")
