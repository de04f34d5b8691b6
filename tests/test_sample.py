"""Sampling: reproducible under a seed, greedy at temperature 0, top-k/top-p respected."""

import numpy as np
import pytest
from draws import assert_same_draws

from rnngen.errors import RnngenError
from rnngen.kernels import sample_rows
from rnngen.lanes import Lanes
from rnngen.model import Model, ModelConfig
from rnngen.sample import _sample_block, sample
from rnngen.vocab import Vocab


@pytest.fixture(scope="module")
def lm():
    vocab = Vocab.build(["a b c d e f g h", "h g f e d c b a", "a a b b"])
    model = Model.init(ModelConfig(vocab_size=len(vocab), hidden=12), seed=4)
    for v in model.params.values():
        v *= 4.0
    return model, vocab


def test_same_seed_same_samples(lm):
    model, vocab = lm
    a = sample(model, vocab, n=5, seed=7, max_length=30)
    assert a == sample(model, vocab, n=5, seed=7, max_length=30)
    assert a != sample(model, vocab, n=5, seed=8, max_length=30)
    assert len(a) == 5


def greedy_path(model, vocab, length):
    """The argmax path computed step by step, independently of the sampler."""
    state, token, path = model.zero_state(1), 0, []
    for _ in range(length):
        top, _, state = model.hidden_forward(np.array([[token]], dtype=np.int32), state)
        token = int(np.argmax(model.next_logprobs(top[0])[0]))
        if token == vocab.eos:
            break
        path.append(token)
    return vocab.decode(path)


@pytest.mark.parametrize("temperature", [0.0, 1e-4])
def test_temperature_near_zero_is_the_argmax_path(lm, temperature):
    model, vocab = lm
    lines = sample(model, vocab, n=3, temperature=temperature, seed=1, max_length=20)
    assert lines == [greedy_path(model, vocab, 20)] * 3


def test_top_k_never_leaves_the_k_most_likely():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2000, 40)).astype(np.float32)
    out = np.empty(2000, dtype=np.int32)
    for k in (1, 3, 10):
        sample_rows(logits, 1.0, k, 1.0, rng.random(2000), out)
        top = np.argsort(-logits, axis=1)[:, :k]
        assert all(out[i] in top[i] for i in range(2000))


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4000, dtype=np.float32))
    out = np.empty(4000, dtype=np.int32)
    sample_rows(logits, 1.0, 0, 0.8, np.random.default_rng(1).random(4000), out)
    assert set(out) == {0, 1}
    assert abs((out == 0).mean() - 0.5 / 0.8) < 0.03


def test_unrestricted_sampling_matches_the_distribution():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    logits = np.log(np.tile(p, (20000, 1))).astype(np.float32)
    out = np.empty(20000, dtype=np.int32)
    sample_rows(logits, 1.0, 0, 1.0, np.random.default_rng(2).random(20000), out)
    assert np.allclose(np.bincount(out, minlength=4) / 20000, p, atol=0.015)


def test_prime_is_continued(lm):
    model, vocab = lm
    lines = sample(model, vocab, n=2, prime="a b", seed=3, max_length=5)
    assert all(line.startswith("a b") for line in lines)


def test_bad_options_are_refused(lm):
    model, vocab = lm
    for kwargs in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"n": -5}, {"top_k": 10**6},
                   {"prime": "zzz qqq"}):
        with pytest.raises(RnngenError):
            sample(model, vocab, **kwargs)


def built(cell, layers, softmax, tie=False, seed=5):
    vocab = Vocab.build(["a b c d e f g h", "h g f e d c b a", "a a b b c"])
    counts = np.arange(len(vocab))[::-1].astype(float)
    cfg = ModelConfig(vocab_size=len(vocab), cell=cell, hidden=10, layers=layers, softmax=softmax,
                      classes=3, tie_weights=tie).with_classes(counts).with_tree(counts)
    model = Model.init(cfg, seed=seed)
    for v in model.params.values():
        v *= 3.0
    return model, vocab


CONFIGS = [("lstm", 2, "full", False), ("gru", 2, "class", False),
           ("rnn", 3, "class", True), ("lstm", 1, "class", True), ("gru", 2, "hs", False), ("rnn", 1, "hs", False)]


@pytest.mark.parametrize("cell,layers,softmax,tie", CONFIGS)
def test_every_cell_and_depth_samples_the_argmax_path(cell, layers, softmax, tie):
    model, vocab = built(cell, layers, softmax, tie)
    assert sample(model, vocab, n=4, temperature=0, max_length=15) == [greedy_path(model, vocab, 15)] * 4


@pytest.mark.parametrize("cell,layers,softmax,tie", CONFIGS)
def test_drawn_tokens_follow_the_models_distribution(cell, layers, softmax, tie):
    """The first token of 6000 lines, drawn in the sampling kernel, against p(w | <eos>)
    from the model's own forward pass and output layer."""
    model, vocab = built(cell, layers, softmax, tie)
    top, _, _ = model.hidden_forward(np.zeros((1, 1), dtype=np.int32), model.zero_state(1))
    p = np.exp(model.next_logprobs(top[0])[0])
    lines = sample(model, vocab, n=6000, max_length=1, seed=11)
    counts = np.bincount([vocab.index[w] if w else vocab.eos for w in lines], minlength=len(vocab))
    assert np.abs(counts / 6000 - p).max() < 0.025


@pytest.mark.parametrize("cell,layers,softmax", [("rnn", 1, "full"), ("lstm", 2, "class"), ("gru", 2, "full"),
                                                 ("lstm", 1, "hs")])
@pytest.mark.parametrize("lanes", [1, 2])
def test_lines_that_end_early_leave_the_others_intact(cell, layers, softmax, lanes):
    """Lines sampled together (in one kernel call, or split over two lanes) equal each line
    sampled alone with the same random numbers, although some lines end (and leave the
    batch) before others."""
    model, vocab = built(cell, layers, softmax)
    u = np.random.default_rng(2).random((40, 12))
    together = _sample_block(model, model.zero_state(1), [vocab.eos], u, vocab.eos, 1.0, 0, 1.0, Lanes(lanes))
    assert sum(len(ids) < 12 for ids in together) >= 5
    alone = [_sample_block(model, model.zero_state(1), [vocab.eos], u[i:i + 1], vocab.eos, 1.0, 0, 1.0)[0]
             for i in range(40)]
    assert_same_draws(model, vocab.eos, alone, together, u)          # exact but for draws on a boundary
