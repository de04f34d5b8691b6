"""Scores are proper probabilities, and the batched scorer agrees with the stream scorer."""

import itertools
import math

import numpy as np
import pytest

from rnngen.cells import CELLS
from rnngen.model import Model, ModelConfig
from rnngen.score import score_lines, stream_logprob
from rnngen.vocab import Vocab


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_all_sequences_of_length_L_sum_to_one(cell):
    V, L = 4, 5          # <eos>, <unk>, a, b: 4^5 = 1024 sequences
    model = Model.init(ModelConfig(vocab_size=V, cell=cell, hidden=6, layers=2), seed=1, dtype=np.float64)
    for v in model.params.values():
        v *= 5.0         # a peaked, far from uniform distribution
    total = sum(math.exp(stream_logprob(model, seq)[0]) for seq in itertools.product(range(V), repeat=L))
    assert total == pytest.approx(1.0, abs=1e-9)


def test_float32_distribution_sums_to_one():
    V = 50
    model = Model.init(ModelConfig(vocab_size=V, hidden=16), seed=2)
    top, _, _ = model.hidden_forward(np.zeros((1, 1), dtype=np.int32), model.zero_state(1))
    probs = np.exp(model.next_logprobs(top[0]).astype(np.float64))
    logps = [stream_logprob(model, [t])[0] for t in range(V)]
    assert np.exp(logps).sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(np.exp(logps), probs, atol=1e-6)


def test_sentence_score_equals_stream_of_one_line():
    vocab = Vocab.build(["a b c", "b c d e"])
    model = Model.init(ModelConfig(vocab_size=len(vocab), hidden=8), seed=0, dtype=np.float64)
    lines = ["a b c", "e d", "", "a zzz b", "b c d e a b c d e a b"]
    results = score_lines(model, vocab, lines, per_token=True)
    for line, r in zip(lines, results):
        ids = vocab.encode_stream([line])
        logprob, n = stream_logprob(model, ids)
        assert r.text == line
        assert r.tokens == n == len(line.split()) + 1
        assert r.logprob == pytest.approx(logprob, abs=1e-10)
        assert sum(lp for _, lp in r.token_logprobs) == pytest.approx(r.logprob)
        assert r.perplexity == pytest.approx(math.exp(-logprob / n))
    assert results[3].oov == 1
    assert [t for t, _ in results[3].token_logprobs] == ["a", "<unk>", "b", "<eos>"]


def test_many_long_lines_scored_side_by_side_equal_each_line_alone(monkeypatch):
    """Batches of lines are cut into chunks of at most MAX_ROWS rows: the state must carry."""
    import rnngen.score

    monkeypatch.setattr(rnngen.score, "MAX_ROWS", 100)          # 64 lines: 1 time step per chunk
    vocab = Vocab.build(["a b c d e f"])
    model = Model.init(ModelConfig(vocab_size=len(vocab), cell="lstm", hidden=8), seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    lines = [" ".join(rng.choice(list("abcdef"), rng.integers(0, 30))) for _ in range(70)]
    for line, r in zip(lines, score_lines(model, vocab, lines)):
        assert r.logprob == pytest.approx(stream_logprob(model, vocab.encode_stream([line]))[0], abs=1e-10)


def test_stream_scoring_is_chunk_independent():
    """A stream longer than one scoring chunk carries its state across chunk borders."""
    from rnngen.score import chunked_logprobs

    model = Model.init(ModelConfig(vocab_size=9, hidden=8), seed=0, dtype=np.float64)
    ids = np.random.default_rng(0).integers(0, 9, 600).astype(np.int32)
    inputs = np.concatenate(([0], ids[:-1])).astype(np.int32)[:, None]
    whole, _ = chunked_logprobs(model, inputs, ids[:, None], chunk=600)
    chunked, _ = chunked_logprobs(model, inputs, ids[:, None], chunk=7)
    assert np.allclose(whole, chunked, atol=1e-12)


def test_unshifted_softmax_recomputes_rows_where_exp_overflows_or_underflows():
    from rnngen.softmax import log_softmax_pick, softmax_xent_grad

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (7, 50)).astype(np.float32)
    logits[1] += 120        # every exp overflows float32
    logits[3] -= 120        # every exp underflows
    logits[4, 7] = 95       # one entry overflows
    logits[5, 0] = np.nan   # stays NaN (divergence detection relies on it)
    targets = rng.integers(0, 50, 7)
    asked = []

    def fresh(rows):
        asked.extend(rows)
        return logits[rows].copy()

    got, ref = log_softmax_pick(logits.copy(), targets, fresh), log_softmax_pick(logits.copy(), targets)
    assert sorted(asked) == [1, 3, 4, 5]
    assert np.isnan(got[5]) and np.isnan(ref[5])
    keep = [0, 1, 2, 3, 4, 6]
    assert np.isfinite(got[keep]).all() and np.allclose(got[keep], ref[keep], atol=1e-5)
    grad, grad_ref = logits.copy(), logits.copy()
    lp = softmax_xent_grad(grad, targets, 0.5, fresh)
    lp_ref = softmax_xent_grad(grad_ref, targets, 0.5)
    assert np.allclose(lp[keep], lp_ref[keep], atol=1e-5) and np.allclose(grad[keep], grad_ref[keep], atol=1e-6)
    assert np.isnan(lp[5]) and np.isnan(lp_ref[5])
    shifted = logits[keep].astype(np.float64)
    shifted -= shifted.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    picked = (np.arange(len(keep)), targets[keep])
    assert np.allclose(lp[keep], log_p[picked], atol=1e-5)
    onehot = np.zeros_like(log_p)
    onehot[picked] = 1.0
    assert np.allclose(grad[keep], 0.5 * (np.exp(log_p) - onehot), atol=1e-7)      # do = scale (softmax - y)


@pytest.mark.parametrize("batch", [1, 3])
def test_scoring_on_two_lanes_equals_one_chunk_after_another(monkeypatch, batch):
    """The layers running ahead of the output layer (two lanes) give exactly what one chunk
    after the other gives, and leave the BLAS threads as found."""
    import rnngen.score
    from rnngen import blas, jit
    from rnngen.score import chunked_logprobs

    monkeypatch.setattr(jit, "SMALL_JOB", 0)                # compiled kernels: they release the GIL
    model = Model.init(ModelConfig(vocab_size=40, cell="lstm", hidden=12, layers=2), seed=0)
    rng = np.random.default_rng(3)
    inputs = rng.integers(0, 40, (50, batch)).astype(np.int32)
    targets = rng.integers(0, 40, (50, batch)).astype(np.int32)
    before = blas.thread_count()
    pieces = []
    real_write = rnngen.score._write_logprobs
    monkeypatch.setattr(rnngen.score, "_write_logprobs", lambda *args: (pieces.append(1), real_write(*args)))
    try:
        blas.set_threads(1)                                 # one BLAS thread: one chunk after another
        plain, plain_state = chunked_logprobs(model, inputs, targets, chunk=7)
        assert len(pieces) == 7 + 1                         # one piece per chunk: 7 chunks of 7 steps, then 1
        pieces.clear()
        blas.set_threads(2)
        on_lanes, lanes_state = chunked_logprobs(model, inputs, targets, chunk=7)
        assert len(pieces) == 2 * 7 + 1                     # each chunk in 2 pieces for 2 lanes, the last step in 1
        assert blas.thread_count() == 2
    finally:
        blas.set_threads(before)
    # Two lanes run each chunk's products on half the rows; a BLAS may block those differently
    # (seen in the last bit on AMD Zen 4), so compare to float32 rounding: a wrong or lost
    # piece would move a log-probability by far more.
    np.testing.assert_allclose(on_lanes, plain, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lanes_state, plain_state, rtol=1e-5, atol=1e-6)


def test_lines_scored_on_two_lanes_equal_one_batch_after_another(monkeypatch):
    """On lanes the layers of later batches of lines run ahead of the output layer of earlier
    ones: the scores are still exactly those of one batch after another, in input order."""
    import rnngen.score
    from rnngen import blas, jit

    monkeypatch.setattr(jit, "SMALL_JOB", 0)                # compiled kernels: they release the GIL
    monkeypatch.setattr(rnngen.score, "MAX_ROWS", 128)      # 64 lines: 2 time steps per chunk
    vocab = Vocab.build(["a b c d e f"])
    model = Model.init(ModelConfig(vocab_size=len(vocab), cell="gru", hidden=8, layers=2), seed=0)
    rng = np.random.default_rng(2)
    lines = [" ".join(rng.choice(list("abcdef"), rng.integers(0, 12))) for _ in range(300)]   # 5 batches
    pieces = []
    real_write = rnngen.score._write_logprobs
    monkeypatch.setattr(rnngen.score, "_write_logprobs", lambda *args: (pieces.append(1), real_write(*args)))
    before = blas.thread_count()
    try:
        blas.set_threads(1)
        serial = score_lines(model, vocab, lines)
        one_lane = len(pieces)
        blas.set_threads(2)
        on_lanes = score_lines(model, vocab, lines)
    finally:
        blas.set_threads(before)
    assert len(pieces) - one_lane > one_lane                 # chunks were split over the two lanes
    assert [r.text for r in on_lanes] == lines
    assert [r.logprob for r in on_lanes] == [r.logprob for r in serial]


def test_the_output_layer_skips_the_padding_of_short_lines(monkeypatch):
    """Lines of different lengths share a batch; only their own tokens (and <eos>) reach
    the output layer, and each still scores as it does alone."""
    vocab = Vocab.build(["a b c d e f"])
    model = Model.init(ModelConfig(vocab_size=len(vocab), hidden=8), seed=0, dtype=np.float64)
    rows, real = [], model.output.logprobs

    def counting(p, top, targets, bases=None):
        rows.append(len(top))
        return real(p, top, targets, bases)

    monkeypatch.setattr(model.output, "logprobs", counting)
    lines = ["a", "b c d e f a b c d e f", "", "c d", "e f a b c"]
    results = score_lines(model, vocab, lines)
    assert sum(rows) == sum(len(line.split()) + 1 for line in lines) == 24    # not 5 lines x 13 steps
    for line, r in zip(lines, results):
        assert r.logprob == pytest.approx(stream_logprob(model, vocab.encode_stream([line]))[0], abs=1e-10)
