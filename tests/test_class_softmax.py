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


def _layer_case(dtype, order=0):
    """A class softmax with one-word, small and large classes, hashed features of ``order``
    (0: none), and one step's random states and targets (some classes get none)."""
    cfg = ModelConfig(vocab_size=40, hidden=7, softmax="class", class_bounds=[0, 1, 2, 5, 9, 20, 40],
                      direct_order=order, direct_size=256 if order else 0)
    model = Model.init(cfg, seed=2, dtype=dtype)
    rng = np.random.default_rng(3)
    for v in model.params.values():
        v += rng.normal(0, 0.3, v.shape).astype(dtype)
    top = rng.standard_normal((50, 7)).astype(dtype)
    targets = np.concatenate((rng.integers(0, 5, 30), rng.integers(20, 40, 20)))
    rng.shuffle(targets)
    bases = rng.integers(0, 1 << 20, (50, order - 1)) if order else None
    return model, top, targets, bases


@pytest.mark.parametrize("order", [0, 3])
def test_class_layer_on_two_lanes_gives_the_serial_results_bit_for_bit(order):
    """Classes split over lanes write disjoint columns and rows: the same numbers, whichever
    thread runs which class (training's determinism for a given thread count)."""
    from rnngen.lanes import SERIAL, Lanes

    model, top, targets, bases = _layer_case(np.float32, order)
    serial = model.output.loss_grad(model.params, top, targets, 0.05, SERIAL, bases)
    with Lanes(2) as lanes:
        split = model.output.loss_grad(model.params, top, targets, 0.05, lanes, bases)
    assert np.array_equal(serial[0], split[0]) and np.array_equal(serial[1], split[1])
    for name, grad in serial[2].items():
        assert np.array_equal(np.asarray(grad), np.asarray(split[2][name])), name


@pytest.mark.parametrize("order", [0, 3])
def test_class_layer_matches_a_plain_numpy_one(order):
    """Sorted rows, one-word classes skipped, bias gradient in the kernel: the same log p
    and gradients as each class's softmax written out in NumPy (float64)."""
    model, top, targets, bases = _layer_case(np.float64, order)
    p, out, scale = model.params, model.output, 0.05
    logp, dtop, grads = out.loss_grad(p, top, targets, scale, bases=bases)
    full = out.all_logprobs(p, top, bases)                            # log p(w | h), all words
    np.testing.assert_allclose(logp, full[np.arange(len(targets)), targets], rtol=1e-12)
    cls = out.word_class[targets]
    want = {"out.W": np.zeros_like(p["out.W"]), "out.b": np.zeros_like(p["out.b"])}
    dh = np.zeros_like(top)
    for i, (t, c) in enumerate(zip(targets, cls)):
        s, e = out.bounds[c], out.bounds[c + 1]
        q = np.exp(full[i, s:e] - full[i, s:e].max())
        do = scale * (q / q.sum() - (np.arange(s, e) == t))           # s (p(. | class, h) - y)
        want["out.W"][:, s:e] += np.outer(top[i], do)
        want["out.b"][s:e] += do
        dh[i] += p["out.W"][:, s:e] @ do
    dcls = out._class_logits(p, top, bases)
    dcls = np.exp(dcls - dcls.max(axis=1, keepdims=True))
    dcls = scale * (dcls / dcls.sum(axis=1, keepdims=True) - (np.arange(out.n_classes) == cls[:, None]))
    dh += dcls @ p["cls.W"].T
    np.testing.assert_allclose(dtop, dh, rtol=1e-12, atol=1e-15)
    for name in ("out.W", "out.b"):
        np.testing.assert_allclose(grads[name], want[name], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["cls.W"], top.T @ dcls, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out.logprobs(p, top, targets, bases), logp, rtol=1e-12)
