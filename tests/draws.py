"""Comparing sampled lines drawn with the same random numbers by two schedules.

The sampler draws token t of a line by inverting the model's CDF at a uniform u. Two
schedules of the same lines (all in one kernel call, or split over lanes, or one line at a
time) run the same products on different numbers of rows, and a BLAS may block those
differently, so the probabilities can differ in their last bits. A draw then changes only
when u lies within that rounding of a CDF boundary. So lines must be equal, except that a
line may part from its twin at a step whose u lies within MARGIN of a boundary of the
model's CDF there. A wrong row, a swapped line or a lost state moves the distribution by far
more, and is caught.
"""

from __future__ import annotations

import numpy as np

MARGIN = 1e-4


def assert_same_draws(model, eos: int, lines_a, lines_b, uniforms, start=()) -> None:
    """Lines of token ids drawn with ``uniforms[i]`` for line i (``start``: the ids fed
    before the first draw, after ``<eos>``) agree as above."""
    assert len(lines_a) == len(lines_b)
    for i, (a, b) in enumerate(zip(lines_a, lines_b)):
        a, b = [int(x) for x in a] + [eos], [int(x) for x in b] + [eos]
        if a == b:
            continue
        t = next(k for k in range(min(len(a), len(b))) if a[k] != b[k])
        distance = _distance_to_boundary(model, [eos, *start, *a[:t]], uniforms[i][t])
        assert distance < MARGIN, f"line {i} parts at token {t}, u {uniforms[i][t]:.6f} is {distance:.2g} " \
                                  f"from the nearest boundary of the CDF"


def _distance_to_boundary(model, history, u) -> float:
    ids = np.asarray(history, dtype=np.int32)[:, None]
    top, _, _ = model.hidden_forward(ids, model.zero_state(1))
    p = np.exp(model.next_logprobs(top[-1]).astype(np.float64)[0])
    cdf = np.cumsum(p) / p.sum()
    return float(np.abs(cdf[:-1] - u).min())


def words(vocab, lines: list[str]) -> list[list[int]]:
    """Sampled text lines back to token ids (every sampled token is in the vocabulary)."""
    return [[vocab.index[w] for w in line.split()] for line in lines]
