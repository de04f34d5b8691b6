"""The class-factored softmax: exact gradients, and still a proper distribution."""

import itertools
import math

import numpy as np
import pytest
from test_gradients import V, chunk_loss_check

from rnngen.errors import RnngenError
from rnngen.model import Model, ModelConfig
from rnngen.score import stream_logprob
from rnngen.softmax import ClassSoftmax, frequency_classes

BOUNDS = [0, 2, 5, V]


@pytest.mark.parametrize("tied", [False, True])
def test_class_softmax_gradients(tied):
    chunk_loss_check(ModelConfig(vocab_size=V, hidden=4, embed=4, tie_weights=tied, softmax="class",
                                 class_bounds=BOUNDS))


def test_class_softmax_sums_to_one():
    model = Model.init(ModelConfig(vocab_size=5, hidden=6, softmax="class", class_bounds=[0, 1, 3, 5]),
                       seed=3, dtype=np.float64)
    for v in model.params.values():
        v *= 4.0
    total = sum(math.exp(stream_logprob(model, s)[0]) for s in itertools.product(range(5), repeat=4))
    assert total == pytest.approx(1.0, abs=1e-9)
    top, _, _ = model.hidden_forward(np.zeros((1, 3), dtype=np.int32), model.zero_state(3))
    full = model.next_logprobs(top[0])
    assert np.allclose(np.exp(full).sum(axis=1), 1.0)
    assert np.allclose(full[:, 3], [model.output.logprobs(model.params, top[0], np.array([3] * 3))])


def test_frequency_binning():
    counts = np.array([50, 10, 30, 20, 10, 5, 5, 5, 3, 2])
    bounds = frequency_classes(counts, 4)
    assert bounds[0] == 0 and bounds[-1] == 10 and bounds == sorted(set(bounds))
    mass = [counts[a:b].sum() for a, b in zip(bounds, bounds[1:])]
    assert max(mass) <= 80       # no class swallows most of the mass
    assert frequency_classes(counts, 100) == list(range(11))


@pytest.mark.parametrize("make", [Model.init, ClassSoftmax, ModelConfig.param_shapes])
def test_class_softmax_without_bounds_says_how_to_get_them(make):
    message = r"^class softmax needs class_bounds: use ModelConfig\.with_classes\(counts\)$"
    with pytest.raises(RnngenError, match=message):
        make(ModelConfig(vocab_size=5, softmax="class"))


def test_bad_bounds_refused():
    with pytest.raises(RnngenError):
        ModelConfig(vocab_size=5, softmax="class", class_bounds=[0, 3, 3, 5])


@pytest.mark.parametrize("tied", [False, True])
def test_words_of_classes_no_target_fell_in_get_a_zero_gradient(monkeypatch, tied):
    """The word gradient is written class by class into an uninitialised array: the columns
    of the classes no target fell in must be set to zero, not left as they were."""
    model = Model.init(ModelConfig(vocab_size=12, hidden=5, embed=5, tie_weights=tied, softmax="class",
                                   class_bounds=[0, 3, 7, 12]), seed=1, dtype=np.float64)
    monkeypatch.setattr(np, "empty_like", lambda a, **kw: np.full_like(a, np.nan, **kw))   # garbage
    top = np.random.default_rng(0).standard_normal((6, 5))
    targets = np.array([3, 4, 6, 5, 3, 4])                     # all in class 1 (words 3..6)
    _, _, grads = model.output.loss_grad(model.params, top, targets, 1.0)
    d_w = grads["embed"].T if tied else grads["out.W"]
    assert np.isfinite(d_w).all() and np.isfinite(grads["out.b"]).all()
    assert (d_w[:, :3] == 0).all() and (d_w[:, 7:] == 0).all()
    assert (grads["out.b"][:3] == 0).all() and (grads["out.b"][7:] == 0).all()
    assert (d_w[:, 3:7] != 0).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_per_class_softmax_kernel_matches_a_float64_softmax(dtype):
    from rnngen.kernels import softmax_xent_rows

    rng = np.random.default_rng(7)
    logits = (rng.standard_normal((9, 130)) * 6).astype(dtype)
    targets = rng.integers(0, 130, 9)
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    picked = (np.arange(9), targets)
    onehot = np.zeros_like(log_p)
    onehot[picked] = 1.0
    logp = np.empty(9)
    softmax_xent_rows(logits, targets, 0.05, logp)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(logp, log_p[picked], rtol=tol, atol=tol)
    np.testing.assert_allclose(logits, 0.05 * (np.exp(log_p) - onehot), rtol=tol, atol=tol * 0.05)
