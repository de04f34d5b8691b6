"""The NumPy reference (rnngen/reference.py) against the fast path, and against finite differences."""

import subprocess
import sys

import numpy as np
import pytest
from numeric import numeric_grad

from rnngen import reference
from rnngen.model import Model, ModelConfig

V, D, H, T, B = 30, 5, 6, 5, 3
BOUNDS = [0, 2, 6, 13, V]

# Both sides compute the same formulas in float64 and differ only in rounding: BLAS blocks
# its sums and the kernels fuse multiply-adds, the fast path sums a weight gradient over the
# whole chunk in one product where the reference adds it step by step, and its full softmax
# skips the max shift. So a result may differ by a few units in the last place (ulp) of the
# largest terms that went into it. Entries that cancel to near zero keep that absolute
# error: ATOL is a few ulp of the values' scale here (gradients and states of 1e-2 to 1).
# Other entries keep a relative error far below RTOL, which leaves room for another BLAS's
# order of summation; a wrong formula is off by many orders of magnitude more.
RTOL, ATOL = 1e-12, 1e-15

CELLS = {"rnn-tanh": ("rnn", "tanh"), "rnn-relu": ("rnn", "relu"), "gru": ("gru", "tanh"),
         "lstm": ("lstm", "tanh")}


def make_case(cell, tied, layers, softmax, dropout, vocab=V, hidden=H, seed=0):
    """A float64 model with weights larger than at init (so that the non-linearities are
    exercised beyond their linear part), one chunk of ids, a random carried state, masks."""
    name, activation = CELLS[cell]
    bounds = [b for b in BOUNDS if b < vocab] + [vocab]                 # BOUNDS cut at the vocabulary
    cfg = ModelConfig(vocab_size=vocab, cell=name, activation=activation, hidden=hidden, embed=0 if tied else D,
                      layers=layers, tie_weights=tied, dropout=0.3 if dropout else 0.0, softmax=softmax,
                      class_bounds=bounds if softmax == "class" else []).with_tree(np.arange(vocab, 0, -1) % 7)
    model = Model.init(cfg, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for v in model.params.values():
        v += rng.normal(0, 0.3, v.shape)           # in place: out.W and out.b may share one array
    ids = rng.integers(0, vocab, size=(T + 1, B)).astype(np.int32)
    state = rng.normal(0, 0.5, model.zero_state(B).shape)
    masks = model.dropout_masks(rng, T, B) if dropout else None
    return model, ids[:-1], ids[1:], state, masks


def assert_close(actual, desired, name):
    np.testing.assert_allclose(actual, desired, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "dropout"])
@pytest.mark.parametrize("softmax", ["full", "class", "hs"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_fast_path_equals_reference(cell, tied, layers, softmax, dropout):
    if tied and softmax == "hs":
        pytest.skip("hs has no word vectors to tie")
    model, x, y, state, masks = make_case(cell, tied, layers, softmax, dropout)
    loss, grads, final = model.loss_and_grads(x, y, state, masks)
    ref_loss, ref_grads, ref_final, _ = reference.loss_and_grads(model.params, model.config, x, y, state, masks)
    assert_close(loss, ref_loss, "loss")
    assert list(grads) == list(ref_grads) == list(model.params)
    for name in grads:
        assert ref_grads[name].shape == model.params[name].shape, name
        assert_close(np.asarray(grads[name]), ref_grads[name], name)
    assert ref_final.shape == state.shape
    assert_close(final, ref_final, "final state")


@pytest.mark.parametrize("cell", list(CELLS))
def test_reference_gradients_against_finite_differences(cell):
    """The reference on its own: two tied layers, class softmax, dropout and a carried state;
    every parameter's gradient and dL/dstate against central differences of NLL / B."""
    model, x, y, state, masks = make_case(cell, True, 2, "class", True, vocab=8, hidden=4, seed=1)
    params, cfg = model.params, model.config

    def f():
        return reference.loss_and_grads(params, cfg, x, y, state, masks)[0] / B

    _, grads, _, dstate = reference.loss_and_grads(params, cfg, x, y, state, masks)
    checks = [(name, params[name], grads[name]) for name in params] + [("state", state, dstate)]
    for name, arr, ana in checks:
        num = numeric_grad(f, arr)
        # Central differences are exact to O(eps²) and carry rounding of about 1e-16 / eps.
        np.testing.assert_allclose(ana, num, rtol=1e-6, atol=1e-8, err_msg=name)


def test_reference_hs_against_finite_differences():
    """The reference's hierarchical softmax on its own: every gradient of NLL / B."""
    model, x, y, state, masks = make_case("gru", False, 1, "hs", True, vocab=8, hidden=4, seed=2)
    params, cfg = model.params, model.config

    def f():
        return reference.loss_and_grads(params, cfg, x, y, state, masks)[0] / B

    _, grads, _, dstate = reference.loss_and_grads(params, cfg, x, y, state, masks)
    for name, arr, ana in [(name, params[name], grads[name]) for name in params] + [("state", state, dstate)]:
        np.testing.assert_allclose(ana, numeric_grad(f, arr), rtol=1e-6, atol=1e-8, err_msg=name)


def test_dropout_masks_equal_the_models():
    model = make_case("lstm", False, 2, "full", True)[0]
    ours = reference.dropout_masks(np.random.default_rng(5), model.config, T, B)
    theirs = model.dropout_masks(np.random.default_rng(5), T, B)
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def test_reference_imports_without_numba():
    code = ("import sys; sys.modules['numba'] = None; import rnngen.reference; "
            "assert 'rnngen.kernels' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
