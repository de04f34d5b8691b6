"""Training curves as an image: train and valid perplexity of one or more runs.

A run is ``(name, records)`` with records as :func:`rnngen.metrics.read_log` returns them
(or :func:`rnngen.metrics.history_to_records` makes them from a checkpoint), so this module
reads no files itself. Matplotlib is an optional extra (``pip install 'rnngen[plot]'``),
imported only when a plot is drawn, and always with the Agg (file-only) canvas.

Each run gets one colour: train perplexity a solid line, valid perplexity dashed with a
dot per measurement, a dotted vertical line where the learning rate decays and a star at
the best point (the last ``best`` event; without one, the lowest valid perplexity, else
the lowest train). Each line carries a ``gid`` of ``"<name>:<part>"`` (part: train, valid,
best, lr_decay) so callers and tests can find it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from .errors import RnngenError
from .textplot import LOG_SCALE_SPAN

X_AXES = ("time", "tokens", "epoch")
INSTALL_HINT = "plotting needs matplotlib: pip install 'rnngen[plot]'"
_X_FIELDS = {"time": "train_seconds", "tokens": "tokens", "epoch": "epoch"}
_TIME_UNITS = ((7200, 3600, "h"), (120, 60, "min"), (0, 1, "s"))   # (from max seconds, divisor, label)


def run_names(paths: Sequence[str]) -> list[str]:
    """Legend names for runs read from ``paths``: the file stem, with its folder in front
    when two paths share a stem (``a/run.jsonl`` and ``b/run.jsonl`` -> ``a/run``, ``b/run``)."""
    stems = [os.path.splitext(os.path.basename(os.fspath(p)))[0] for p in paths]
    return [os.path.join(os.path.basename(os.path.dirname(os.path.abspath(p))), s) if stems.count(s) > 1 else s
            for p, s in zip(paths, stems)]


def time_unit(runs: Sequence[tuple[str, Sequence[dict]]]) -> tuple[float, str]:
    """(seconds per unit, unit label) for the time axis: hours past 2 h, minutes past 2 min."""
    longest = max((r["train_seconds"] for _, records in runs for r in records
                   if r.get("train_seconds") is not None), default=0.0)
    return next((div, label) for start, div, label in _TIME_UNITS if longest >= start)


def plot_runs(runs: Sequence[tuple[str, Sequence[dict]]], x: str = "epoch", output: str | None = None):
    """Draw the runs' perplexity curves against ``x`` (time, tokens or epoch); returns the
    matplotlib Figure, after writing it to ``output`` (format from its extension) if given.

    Points whose perplexity is missing or not finite are left out; a run with no point to
    draw, or without the ``x`` values (a history has no token counts without a step size),
    raises RnngenError, as does a missing matplotlib.
    """
    if x not in X_AXES:
        raise RnngenError(f"cannot plot against {x!r}: choose one of {', '.join(X_AXES)}")
    if not runs:
        raise RnngenError("no runs to plot")
    figure_class, canvas_class, colours = _matplotlib()
    fig = figure_class(figsize=(8, 5), layout="constrained")
    canvas_class(fig)
    ax = fig.add_subplot()
    scale, unit = time_unit(runs) if x == "time" else (1.0, "")
    ys = []
    for i, (name, records) in enumerate(runs):
        ys += _draw_run(ax, name, records, x, scale, colours[i % len(colours)])
    _style_axes(ax, x, unit, ys)
    if output is not None:
        _save(fig, output)
    return fig


def _matplotlib():
    """(Figure, FigureCanvasAgg, default colour cycle), or RnngenError when not installed."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise RnngenError(INSTALL_HINT) from None
    return Figure, FigureCanvasAgg, matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def series(records: Sequence[dict], x: str, y: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    """The (x, y) points of field ``y`` against axis ``x`` that can be drawn: y present and
    finite. RnngenError when such a point lacks its x value."""
    xs, ys = [], []
    for r in records:
        value = r.get(y)
        if value is None or not math.isfinite(value):
            continue
        if r.get(_X_FIELDS[x]) is None:
            raise RnngenError(f"a record has no {_X_FIELDS[x]}: plot against "
                              f"{' or '.join(a for a in X_AXES if a != x)}")
        xs.append(r[_X_FIELDS[x]] / scale)
        ys.append(value)
    return xs, ys


def best_record(records: Sequence[dict]) -> dict | None:
    """The record the best model comes from: the last with a ``best`` event, else the one
    with the lowest finite valid perplexity, else the lowest finite train perplexity."""
    marked = [r for r in records if "best" in r.get("events", ())]
    if marked:
        return marked[-1]
    for key in ("valid_ppl", "train_ppl"):
        scored = [r for r in records if r.get(key) is not None and math.isfinite(r[key])]
        if scored:
            return min(scored, key=lambda r: r[key])
    return None


def _draw_run(ax, name: str, records: Sequence[dict], x: str, scale: float, colour) -> list[float]:
    """One run's lines; returns the perplexities drawn (for the y scale)."""
    try:
        train, valid = series(records, x, "train_ppl", scale), series(records, x, "valid_ppl", scale)
    except RnngenError as exc:
        raise RnngenError(f"{name}: {exc}") from None
    if not train[0] and not valid[0]:
        raise RnngenError(f"{name}: no perplexity to plot")
    if train[0]:
        ax.plot(*train, "-", color=colour, linewidth=1.4, label=f"{name} train", gid=f"{name}:train")
    if valid[0]:
        ax.plot(*valid, "--", marker="o", markersize=3.5, color=colour, linewidth=1.4, label=f"{name} valid",
                gid=f"{name}:valid")
    for r in records:
        if "lr_decay" in r.get("events", ()) and r.get(_X_FIELDS[x]) is not None:
            ax.axvline(r[_X_FIELDS[x]] / scale, color=colour, linestyle=":", linewidth=1, alpha=0.7,
                       gid=f"{name}:lr_decay")
    best = best_record(records)
    if best is not None:
        key = "valid_ppl" if best.get("valid_ppl") is not None else "train_ppl"
        bx, by = series([best], x, key, scale)
        if bx:
            ax.plot(bx, by, linestyle="none", marker="*", markersize=13, color=colour, markeredgecolor="black",
                    markeredgewidth=0.6, zorder=5, gid=f"{name}:best")
            ax.annotate(f"{by[0]:.2f}", (bx[0], by[0]), xytext=(6, 6), textcoords="offset points", fontsize=8,
                        color=colour)
    return train[1] + valid[1]


def _style_axes(ax, x: str, unit: str, ys: list[float]) -> None:
    """Axis labels, y scale (log when the range is wide), grid and a legend that also
    explains the star and the dotted lines."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter, LogFormatter, ScalarFormatter

    ax.set_xlabel({"time": f"training time ({unit})", "tokens": "tokens processed", "epoch": "epoch"}[x])
    ax.set_ylabel("perplexity")
    if x == "tokens":
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    if min(ys) > 0 and max(ys) / min(ys) > LOG_SCALE_SPAN:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.grid(True, which="major", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], linestyle="none", marker="*", markersize=11, color="gray",
                          markeredgecolor="black", markeredgewidth=0.6, label="best"))
    if any(line.get_gid().endswith(":lr_decay") for line in ax.get_lines() if line.get_gid()):
        handles.append(Line2D([], [], linestyle=":", color="gray", label="lr decay"))
    ax.legend(handles=handles, fontsize=8)


def _save(fig, output: str) -> None:
    try:
        fig.savefig(output, dpi=120)
    except OSError as exc:
        raise RnngenError(f"cannot write {output}: {exc.strerror or exc}") from None
    except ValueError as exc:       # an extension matplotlib has no writer for
        raise RnngenError(f"cannot write {output}: {str(exc).splitlines()[0]}") from None
