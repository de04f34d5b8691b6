"""Sampling: reproducible under a seed, greedy at temperature 0, top-k/top-p respected."""

import numpy as np
import pytest

from rnngen.errors import RnngenError
from rnngen.kernels import sample_rows
from rnngen.model import Model, ModelConfig
from rnngen.sample import sample
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
