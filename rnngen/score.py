"""Scoring: log-probabilities of sentences, and the perplexity of a whole stream.

A sentence is scored from the zero state with ``<eos>`` as its first input (as if the
previous line had just ended); every token and the closing ``<eos>`` are predicted, so a
sentence of n tokens has n + 1 predicted tokens. A stream is scored the same way with the
state carried across lines (the standard Penn Treebank evaluation).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np

from . import blas, jit
from .errors import RnngenError
from .jit import interpreted_if_small
from .lanes import SERIAL, Lanes
from .lanes import shared as shared_lanes
from .model import Model
from .vocab import Vocab

CHUNK = 256          # time steps per forward call: bounds memory for very long lines
BATCH_LINES = 64     # sentences scored side by side
MAX_ROWS = 512       # (time step, line) rows per output-layer product
PACK_MIN_ROWS = 1024 # rows from which the output weights are packed once for the job (blas.Packed):
                     # packing is a copy of the weights, paid back only over several products


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
                     state: np.ndarray | None = None, chunk: int = CHUNK, before: np.ndarray | None = None):
    """log p(targets | inputs so far) for (T, B) id arrays, carrying the state through
    chunks of ``chunk`` steps. ``before``: the inputs before these, for n-gram features
    (:meth:`Model.contexts`; None: ``<eos>``). Returns ((T, B) float64 log-probs, final state)."""
    T, B = inputs.shape
    state = model.zero_state(B) if state is None else state
    out = np.empty((T, B), dtype=np.float64)
    with _scoring_lanes(model, T * B, _chunks(T, B, chunk)) as lanes:
        state = _queue_logprobs(model, inputs, targets, state, chunk, lanes, out, before=before)
    return out, state


def jobs_logprobs(model: Model, jobs: list[tuple], chunk: int = CHUNK) -> list[np.ndarray]:
    """:func:`chunked_logprobs` of each (inputs, targets, state[, before]) in ``jobs``, run
    as one scoring job: the lanes and the packed output weights serve them all."""
    outs = [np.empty(job[0].shape, dtype=np.float64) for job in jobs]
    rows = sum(job[0].size for job in jobs)
    with _scoring_lanes(model, rows, sum(_chunks(*job[0].shape, chunk) for job in jobs)) as lanes:
        for job, out in zip(jobs, outs):
            inputs, targets, state = job[:3]
            _queue_logprobs(model, inputs, targets, state, chunk, lanes, out, before=job[3] if len(job) > 3 else None)
    return outs


def _chunk_steps(B: int, chunk: int) -> int:
    """Time steps per forward call for B streams: at most ``chunk``, at most MAX_ROWS rows."""
    return max(1, min(chunk, MAX_ROWS // B))


def _chunks(T: int, B: int, chunk: int = CHUNK) -> int:
    """Forward calls for T time steps of B streams."""
    return -(-T // _chunk_steps(B, chunk))


@contextlib.contextmanager
def _scoring_lanes(model: Model, rows: int, chunks: int):
    """The lanes a scoring job of ``rows`` (time step, stream) rows in ``chunks`` forward
    calls runs on; everything queued on them is done when the block ends.

    With NumPy's BLAS on several threads and more than one chunk: :class:`Lanes`, each
    calling BLAS on one thread. This thread runs the layers chunk after chunk (Numba,
    without the GIL) and queues each chunk's output layer in pieces; a worker takes them,
    and this thread does its share whenever it gets more than two chunks ahead
    (:meth:`Lanes.catch_up`): with one chunk of slack the two threads wait for each other
    at every chunk, and more slack than two gains nothing. Otherwise the serial schedule,
    one chunk after the other."""
    with interpreted_if_small(rows, model.config.layers, model.config.hidden):
        threads = blas.thread_count()
        if chunks < 2 or threads < 2 or jit.interpreting():
            with _packed_output(model, rows):
                yield SERIAL
            return
        lanes = shared_lanes(threads)
        with blas.numpy_threads(1), _packed_output(model, rows), lanes:
            yield lanes


def _packed_output(model: Model, rows: int):
    """The output layer's weights packed for the job's products when it has many rows."""
    if rows < PACK_MIN_ROWS or jit.interpreting():
        return contextlib.nullcontext()
    return model.output.packed(model.params)


def _queue_logprobs(model: Model, inputs, targets, state, chunk: int, lanes: Lanes, out,
                    lengths: np.ndarray | None = None, before: np.ndarray | None = None) -> np.ndarray:
    """The layers of :func:`chunked_logprobs` here, chunk by chunk; each chunk's output
    layer queued on ``lanes`` in pieces that write into ``out`` (complete once the lanes are
    drained). With ``lengths`` (B,), column j is scored only at its first lengths[j] time
    steps: the output layer skips the padding, whose ``out`` is left unwritten. Returns the
    final state. ``before``: see :func:`chunked_logprobs`."""
    T, B = inputs.shape
    steps = _chunk_steps(B, chunk)
    for a in range(0, T, steps):
        b = min(a + steps, T)
        bases = _chunk_contexts(model, inputs, a, b, before)
        top, _, state = model.hidden_forward(inputs[a:b], state)
        for s, e in lanes.split(b - a):
            scored = None if lengths is None else np.arange(a + s, a + e)[:, None] < lengths
            lanes.submit(_write_logprobs, model, top[s:e], targets[a + s:a + e], out[a + s:a + e], scored,
                         None if bases is None else bases[s:e])
        lanes.catch_up(keep=2 * lanes.count)               # at most two chunks ahead of the worker
    return state


def _chunk_contexts(model: Model, inputs, a: int, b: int, before):
    """The n-gram contexts of inputs[a:b] (None without features), made chunk by chunk: a
    whole stream's would take 8 bytes per token and order. What came before a is inputs[:a],
    and before that ``before``."""
    if not model.config.direct_order:
        return None
    prior = inputs[max(0, a - model.history):a]
    if len(prior) < model.history and before is not None:
        prior = np.concatenate((before, prior))
    return model.contexts(inputs[a:b], prior)


def _write_logprobs(model: Model, top, targets, out, scored=None, bases=None) -> None:
    """log p(target) into ``out`` for (T, B) rows of top-layer states; only where ``scored``.
    ``bases`` (T, B, K): the rows' n-gram contexts, with n-gram features."""
    if scored is None or scored.all():
        out[...] = model.top_logprobs(top, targets, bases)
    elif scored.any():
        out[scored] = model.output.logprobs(model.params, top[scored], targets[scored],
                                            None if bases is None else np.ascontiguousarray(bases[scored]))


def stream_logprob(model: Model, ids: np.ndarray) -> tuple[float, int]:
    """Total log-probability and token count of an id stream (lines already joined by
    ``<eos>``), batch 1, state carried, the first token predicted from ``<eos>``."""
    _forward_only(model)
    ids = np.asarray(ids, dtype=np.int32)
    inputs = np.concatenate(([0], ids[:-1])).astype(np.int32)[:, None]
    lp, _ = chunked_logprobs(model, inputs, ids[:, None])
    return float(lp.sum()), int(ids.size)


def _forward_only(model: Model) -> None:
    """Sentence and stream probabilities come from forward models only."""
    if model.config.bidirectional:
        raise RnngenError("a bidirectional model gives no sentence probability "
                          "(its pseudo-log-likelihood: rnngen.fill.pseudo_log_likelihood)")


def perplexity(model: Model, ids: np.ndarray) -> float:
    logprob, n = stream_logprob(model, ids)
    return math.exp(-logprob / n)


def score_lines(model: Model, vocab: Vocab, lines: list[str], per_token: bool = False) -> list[SentenceScore]:
    """Score each line independently; results in input order. Lines are sorted by length and
    scored BATCH_LINES side by side. On lanes the layers run through all the batches, up to
    two chunks ahead of the output layer (see :func:`_scoring_lanes`)."""
    _forward_only(model)
    encoded = [vocab.encode_line(line) for line in lines]
    order = sorted(range(len(lines)), key=lambda i: len(encoded[i][0]))
    batches = []
    for start in range(0, len(order), BATCH_LINES):
        group = order[start:start + BATCH_LINES]
        T = max(len(encoded[i][0]) for i in group) + 1
        inputs = np.zeros((T, len(group)), dtype=np.int32)    # <eos> (id 0) pads too
        targets = np.zeros((T, len(group)), dtype=np.int32)
        for col, i in enumerate(group):
            ids = encoded[i][0]
            inputs[1:len(ids) + 1, col] = ids
            targets[:len(ids), col] = ids                      # then <eos> at len(ids)
        lengths = np.array([len(encoded[i][0]) + 1 for i in group])  # tokens and <eos>
        batches.append((group, inputs, targets, lengths, np.empty((T, len(group)), dtype=np.float64)))
    rows = sum(inputs.size for _, inputs, _, _, _ in batches)
    chunks = sum(_chunks(*inputs.shape) for _, inputs, _, _, _ in batches)
    with _scoring_lanes(model, rows, chunks) as lanes:
        for group, inputs, targets, lengths, lp in batches:
            _queue_logprobs(model, inputs, targets, model.zero_state(len(group)), CHUNK, lanes, lp, lengths)
    results: list[SentenceScore | None] = [None] * len(lines)
    for group, _, _, _, lp in batches:
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
