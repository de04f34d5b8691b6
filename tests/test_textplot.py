"""The text chart of `rnngen info`: bar heights follow the values, the labels are the
lowest and highest drawn, the best epoch is marked, and odd histories still draw."""

import math

from rnngen.textplot import text_curve

BLOCKS = " ▁▂▃▄▅▆▇█"


def history(valid, train=None):
    train = train or [v * 0.9 if v is not None else 100.0 for v in valid]
    return [{"epoch": e, "partial": False, "train_ppl": t, "valid_ppl": v, "lr": 1.0, "tokens_per_s": 1e3}
            for e, (t, v) in enumerate(zip(train, valid), 1)]


def parts(text, height=8):
    """(title, labelled rows, axis line, epoch line, rest) of a chart."""
    lines = text.splitlines()
    return lines[0], lines[1:height + 1], lines[height + 1], lines[height + 2], lines[height + 3:]


def heights(rows):
    """Each column's bar height in eighths of a row (the part right of the tick)."""
    bars = [row.split("┤" if "┤" in row else "│", 1)[1] for row in rows]
    width = max(len(b) for b in bars)
    bars = [b.ljust(width) for b in bars]
    return [sum(BLOCKS.index(b[c]) for b in bars) for c in range(width)]


def test_one_epoch():
    text = text_curve(history([123.456]))
    title, rows, axis, epochs, rest = parts(text)
    assert title == "valid ppl by epoch; best 123.46 at epoch 1"
    assert rows[0].startswith("123.46 ┤") and rows[-1].startswith("       │")
    assert heights(rows) == [64, 64, 64]                       # one value fills the chart
    assert axis == "       └─▲─" and epochs.strip() == "1" and rest == []


def test_falling_then_rising():
    values = [500.0, 250.0, 180.0, 150.0, 140.0, 145.0, 160.0]
    title, rows, axis, epochs, _ = parts(text_curve(history(values)))
    assert title == "valid ppl by epoch, log scale; best 140.00 at epoch 5"
    assert rows[0].startswith("500.00 ┤") and rows[-1].startswith("140.00 ┤")
    cols = heights(rows)[::3]                                  # 3 characters per epoch
    assert cols[0] == 64 and cols[4] == 1
    assert cols[:5] == sorted(cols[:5], reverse=True) and cols[4] < cols[5] < cols[6]
    log_mid = 1 + round(math.log(180 / 140) / math.log(500 / 140) * 63)
    assert cols[2] == log_mid
    assert axis.index("▲") == axis.index("└") + 1 + 4 * 3 + 1   # under the middle of epoch 5's column
    assert epochs.split() == ["1", "7"]


def test_many_epochs_fit_the_width():
    values = [1000.0 * 0.98 ** e + 100 for e in range(200)]
    text = text_curve(history(values), width=60, height=6)
    title, rows, axis, epochs, rest = parts(text, height=6)
    assert all(len(row.split("┤" if "┤" in row else "│", 1)[1]) <= 60 for row in rows)
    cols = heights(rows)
    assert len(cols) == 60 and cols == sorted(cols, reverse=True) and cols[0] == 48 and cols[-1] == 1
    assert title.endswith(f"best {values[-1]:.2f} at epoch 200")
    top = min(values[:3])                                      # the first column shows the lowest of its epochs
    assert rows[0].startswith(f"{top:.2f} ┤") and rows[-1].lstrip().startswith(f"{values[-1]:.2f} ┤")
    assert axis.endswith("▲") and epochs.split() == ["1", "200"] and rest == []


def test_infinite_and_nan_values():
    values = [300.0, math.inf, math.nan, 150.0, 120.0]
    title, rows, axis, _, rest = parts(text_curve(history(values)))
    assert "best 120.00 at epoch 5" in title
    assert rows[0].startswith("300.00 ┤███∞∞∞???")              # the labels ignore the non-finite values
    assert all(row[11:17].strip() == "" for row in rows[1:])
    assert rest == ["∞ infinite (diverged), ? not a number"]
    assert axis.index("▲") == axis.index("└") + 1 + 4 * 3 + 1


def test_bucket_shows_its_lowest_value():
    title, rows, axis, epochs, _ = parts(text_curve(history([100.0, 300.0, 200.0, 250.0]), width=2))
    assert heights(rows) == [1, 64]
    assert rows[0].startswith("200.00 ┤") and rows[-1].startswith("100.00 ┤")
    assert axis.endswith("└▲─") and "epoch 1" in title


def test_bucket_with_inf_shows_the_finite_value():
    values = [200.0] * 10 + [math.inf] + [100.0] * 9
    title, rows, _, _, rest = parts(text_curve(history(values), width=10))
    assert rest == [] and "∞" not in "".join(rows)
    assert heights(rows)[5] == 1                               # epochs 11-12: inf and 100


def test_all_infinite():
    text = text_curve(history([math.inf, math.inf]))
    assert "best" not in text.splitlines()[0] and "∞∞∞∞∞∞" in text and "▲" not in text


def test_without_valid_ppl_falls_back_to_train():
    h = history([None, None, None], train=[300.0, 200.0, 250.0])
    title, rows, axis, _, _ = parts(text_curve(h, height=4), height=4)
    assert title == "train ppl (no valid ppl recorded) by epoch; best 200.00 at epoch 2"
    assert rows[0].startswith("300.00 ┤") and rows[-1].startswith("200.00 ┤")
    assert heights(rows)[::3] == [32, 1, 1 + round(0.5 * 31)]


def test_part_epochs_and_ascii():
    h = history([300.0, 200.0, 150.0])
    h[2]["partial"] = True
    text = text_curve(h, ascii=True)
    assert text.isascii() and "best 150.00 at epoch 3*" in text
    assert text.splitlines()[-1].split() == ["1", "3*"]
    assert "^" in text.splitlines()[-2] and "#" in text


def test_nothing_to_draw():
    assert text_curve([]) == ""
    assert text_curve(history([None], train=[None])) == ""
