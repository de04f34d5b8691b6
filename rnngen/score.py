"""Scoring: log-probabilities of sentences, and the perplexity of a whole stream.

A sentence is scored from the zero state with ``<eos>`` as its first input (as if the
previous line had just ended); every token and the closing ``<eos>`` are predicted, so a
sentence of n tokens has n + 1 predicted tokens. A stream is scored the same way with the
state carried across lines (the standard Penn Treebank evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import blas, jit
from .jit import interpreted_if_small
from .lanes import shared as shared_lanes
from .model import Model
from .vocab import Vocab

CHUNK = 256          # time steps per forward call: bounds memory for very long lines
BATCH_LINES = 64     # sentences scored side by side
MAX_ROWS = 512       # (time step, line) rows per output-layer product


@dataclass
class SentenceScore:
    text: str
    logprob: float          # natural log, including the end-of-line token
    tokens: int             # predicted tokens, the end-of-line token included
    oov: int                # tokens mapped to <unk>
    token_logprobs: list = field(default_factory=list)   # [(token, logprob)], with --per-token

    @property
    def perplexity(self) -> float:
        return math.exp(-self.logprob / self.tokens)


def chunked_logprobs(model: Model, inputs: np.ndarray, targets: np.ndarray,
                     state: np.ndarray | None = None, chunk: int = CHUNK):
    """log p(targets | inputs so far) for (T, B) id arrays, carrying the state through
    chunks of ``chunk`` steps. Returns ((T, B) float64 log-probs, final state).

    With NumPy's BLAS on several threads, the chunks run on :class:`Lanes` instead: this
    thread runs the layers of chunk k+1 (Numba, without the GIL) while a worker starts on
    the output layer of chunk k, in pieces; this thread then helps with what is left. Each
    lane calls BLAS on one thread meanwhile.
    """
    T, B = inputs.shape
    chunk = max(1, min(chunk, MAX_ROWS // B))
    spans = [(start, min(start + chunk, T)) for start in range(0, T, chunk)]
    state = model.zero_state(B) if state is None else state
    out = np.empty((T, B), dtype=np.float64)
    with interpreted_if_small(T * B, model.config.layers, model.config.hidden):
        threads = blas.thread_count()
        if len(spans) < 2 or threads < 2 or jit.interpreting():
            for a, b in spans:
                out[a:b], state = model.token_logprobs(inputs[a:b], targets[a:b], state)
            return out, state
        lanes = shared_lanes(threads)
        with blas.numpy_threads(1), lanes:
            for a, b in spans:
                top, _, state = model.hidden_forward(inputs[a:b], state)
                lanes.drain()                               # the chunk before: done, with our help
                for s, e in lanes.split(b - a):
                    lanes.submit(_write_logprobs, model, top[s:e], targets[a + s:a + e], out[a + s:a + e])
    return out, state


def _write_logprobs(model: Model, top, targets, out) -> None:
    out[...] = model.top_logprobs(top, targets)


def stream_logprob(model: Model, ids: np.ndarray) -> tuple[float, int]:
    """Total log-probability and token count of an id stream (lines already joined by
    ``<eos>``), batch 1, state carried, the first token predicted from ``<eos>``."""
    ids = np.asarray(ids, dtype=np.int32)
    inputs = np.concatenate(([0], ids[:-1])).astype(np.int32)[:, None]
    lp, _ = chunked_logprobs(model, inputs, ids[:, None])
    return float(lp.sum()), int(ids.size)


def perplexity(model: Model, ids: np.ndarray) -> float:
    logprob, n = stream_logprob(model, ids)
    return math.exp(-logprob / n)


def score_lines(model: Model, vocab: Vocab, lines: list[str], per_token: bool = False) -> list[SentenceScore]:
    """Score each line independently; results in input order."""
    encoded = [vocab.encode_line(line) for line in lines]
    results: list[SentenceScore | None] = [None] * len(lines)
    order = sorted(range(len(lines)), key=lambda i: len(encoded[i][0]))
    for start in range(0, len(order), BATCH_LINES):
        group = order[start:start + BATCH_LINES]
        T = max(len(encoded[i][0]) for i in group) + 1
        inputs = np.zeros((T, len(group)), dtype=np.int32)    # <eos> (id 0) pads too
        targets = np.zeros((T, len(group)), dtype=np.int32)
        for col, i in enumerate(group):
            ids = encoded[i][0]
            inputs[1:len(ids) + 1, col] = ids
            targets[:len(ids), col] = ids                      # then <eos> at len(ids)
        lp, _ = chunked_logprobs(model, inputs, targets)
        for col, i in enumerate(group):
            ids, oov = encoded[i]
            n = len(ids) + 1
            tok_lp = lp[:n, col]
            pairs = []
            if per_token:
                names = [vocab.tokens[t] for t in ids] + ["<eos>"]
                pairs = [(name, float(v)) for name, v in zip(names, tok_lp)]
            results[i] = SentenceScore(lines[i], float(tok_lp.sum()), n, oov, pairs)
    return results  # type: ignore[return-value]

