"""Analytic BPTT gradients against central finite differences, in float64."""

import numpy as np
import pytest
from numeric import numeric_grad

from rnngen.cells import make_cell
from rnngen.lanes import SERIAL, Lanes
from rnngen.model import Model, ModelConfig
from rnngen.optim import RowGrad

V, T, B = 7, 5, 3
EPS = 1e-6
TOL = 1e-5


def rel_error(num: np.ndarray, ana: np.ndarray) -> float:
    return float(np.abs(num - ana).max() / max(np.abs(num).max(), np.abs(ana).max(), 1e-8))


def chunk_loss_check(config: ModelConfig, seed: int = 0, with_dropout: bool = False, lanes: Lanes = SERIAL) -> float:
    """Max relative error over every parameter and the carried-in state for the second of
    two chunks, its initial state carried over from the first; the step spread over ``lanes``."""
    rng = np.random.default_rng(seed)
    model = Model.init(config, seed=seed, dtype=np.float64)
    # Larger-than-default weights so the non-linearities are exercised, not just linear.
    for v in model.params.values():
        v += rng.normal(0, 0.3, v.shape)
    ids = rng.integers(0, V, size=(2 * T + 1, B)).astype(np.int32)
    state0 = model.zero_state(B)
    _, _, carried = model.loss_and_grads(ids[:T], ids[1:T + 1], state0)
    assert np.abs(carried).max() > 0.05  # the second chunk really starts from a carried state
    carried = carried.copy()
    x, y = ids[T:2 * T], ids[T + 1:2 * T + 1]
    masks = model.dropout_masks(rng, T, B) if with_dropout else None

    def f():
        return model.loss_and_grads(x, y, carried, masks)[0] / B

    # Record dL/dstate0 of each layer: the model runs the layers' backward top-down and
    # drops it (truncated BPTT), so spy on the cell's backward.
    dstate = np.zeros_like(carried)
    layer_order = iter(range(config.layers - 1, -1, -1))
    cell_backward = model.cell.backward

    def spy(P, fcache, dh, state0, lanes):
        dx, lg, ds0 = cell_backward(P, fcache, dh, state0, lanes)
        dstate[next(layer_order)] = ds0
        return dx, lg, ds0

    model.cell.backward = spy
    _, grads, _ = model.loss_and_grads(x, y, carried, masks, lanes)
    model.cell.backward = cell_backward

    assert set(grads) == set(model.params)
    errors = {name: rel_error(numeric_grad(f, param), grads[name]) for name, param in model.params.items()}
    errors["state0"] = rel_error(numeric_grad(f, carried), dstate)
    for name, err in errors.items():
        assert err < TOL, f"{name}: relative error {err:.2e}"
    return max(errors.values())


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_vanilla_rnn_gradients(activation):
    chunk_loss_check(ModelConfig(vocab_size=V, cell="rnn", hidden=4, embed=3,
                                 activation=activation))


def test_two_layer_tied_rnn_with_dropout_mask():
    chunk_loss_check(ModelConfig(vocab_size=V, cell="rnn", hidden=4, layers=2,
                                 tie_weights=True, dropout=0.3), with_dropout=True)


GATED_CASES = {
    "1layer": (dict(layers=1, embed=3), False),
    "2layer-untied": (dict(layers=2, embed=3), False),
    "2layer-untied-dropout": (dict(layers=2, embed=3, dropout=0.3), True),
    "2layer-tied-dropout": (dict(layers=2, tie_weights=True, dropout=0.3), True),
}


@pytest.mark.parametrize("case", list(GATED_CASES))
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_cell_gradients(cell, case):
    kwargs, with_dropout = GATED_CASES[case]
    chunk_loss_check(ModelConfig(vocab_size=V, cell=cell, hidden=4, **kwargs), with_dropout=with_dropout)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_gradients_with_two_lanes(cell, tied):
    """The step split over two threads (rows of the output layer, weight gradients as side
    tasks) has the same gradients."""
    lanes = Lanes(2)
    chunk_loss_check(ModelConfig(vocab_size=V, cell=cell, hidden=4, layers=2, tie_weights=tied, dropout=0.3),
                     with_dropout=True, lanes=lanes)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_cell_backward_against_finite_differences(cell):
    """One layer on its own, loss = sum(w * h) with random w: dL/dx, every parameter
    and dL/dstate0 (both h and c for the LSTM) from ``Cell.backward``."""
    rng = np.random.default_rng(1)
    H, n_in = 4, 3
    c = make_cell(cell)
    P = c.init_params(n_in, H, rng, np.float64)
    for v in P.values():
        v += rng.normal(0, 0.3, v.shape)
    x = rng.normal(0, 1, (T, B, n_in))
    state0 = rng.normal(0, 0.5, (c.state_parts, B, H))
    w = rng.normal(0, 1, (T, B, H))

    def f():
        return float((c.forward(P, x, state0)[0] * w).sum())

    h, fcache, state_T = c.forward(P, x, state0)
    assert h.shape == (T, B, H) and state_T.shape == state0.shape
    np.testing.assert_array_equal(state_T[0], h[-1])
    dx, grads, dstate0 = c.backward(P, fcache, w, state0)
    assert set(grads) == set(P) and dstate0.shape == state0.shape
    checks = [("x", x, dx), ("state0", state0, dstate0)] + [(k, P[k], grads[k]) for k in P]
    for name, arr, ana in checks:
        err = rel_error(numeric_grad(f, arr), ana)
        assert err < TOL, f"{cell} {name}: relative error {err:.2e}"


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_float32_matches_float64(cell):
    """The kernels compile for float32 (training) and agree with float64."""
    cfg = ModelConfig(vocab_size=V, cell=cell, hidden=8, layers=2)
    m64 = Model.init(cfg, seed=3, dtype=np.float64)
    m32 = Model(cfg, {k: v.astype(np.float32) for k, v in m64.params.items()})
    ids = np.random.default_rng(3).integers(0, V, size=(2 * T + 1, B)).astype(np.int32)
    l64, g64, s64 = m64.loss_and_grads(ids[:-1], ids[1:], m64.zero_state(B))
    l32, g32, s32 = m32.loss_and_grads(ids[:-1], ids[1:], m32.zero_state(B))
    assert s32.dtype == np.float32 and all(g.dtype == np.float32 for g in g32.values())
    assert abs(l32 - l64) < 1e-4 * abs(l64)
    np.testing.assert_allclose(s32, s64, atol=1e-5)
    for k in g64:
        np.testing.assert_allclose(g32[k], g64[k], atol=1e-4 * max(np.abs(g64[k]).max(), 1e-3))


def test_lstm_forget_bias_is_one():
    p = make_cell("lstm").init_params(3, 4, np.random.default_rng(0), np.float32)
    np.testing.assert_array_equal(p["b"][4:8], 1.0)
    assert np.all(np.abs(p["b"][:4]) < 1) and np.all(np.abs(p["b"][8:]) < 1)


def test_untied_output_weights_and_bias_share_one_array():
    """The fast path of FullSoftmax (bias as an extra row of the output matrix) is the one
    the gradient checks above exercise, and it survives a checkpoint's separate arrays."""
    from rnngen.softmax import _stacked

    model = Model.init(ModelConfig(vocab_size=V, hidden=4), seed=0)
    assert _stacked(model.params) is not None
    separate = {k: v.copy() for k, v in model.params.items()}
    assert _stacked(separate) is None and _stacked(Model(model.config, separate).params) is not None
    tied = Model.init(ModelConfig(vocab_size=V, hidden=4, tie_weights=True), seed=0)
    assert "out.W" not in tied.params


@pytest.mark.parametrize("tied", [False, True])
def test_embedding_gradient_holds_only_the_chunks_tokens(tied):
    """Untied, the embedding's gradient is a RowGrad over the chunk's distinct input tokens
    (the optimiser updates those rows only); tied, the output layer fills every row."""
    cfg = ModelConfig(vocab_size=V, cell="rnn", hidden=4, tie_weights=tied)
    model = Model.init(cfg, seed=0, dtype=np.float64)
    ids = np.array([[1, 3], [3, 5], [1, 2]], dtype=np.int32)
    _, grads, _ = model.loss_and_grads(ids[:-1], ids[1:], model.zero_state(2))
    if tied:
        assert isinstance(grads["embed"], np.ndarray) and np.all(np.abs(grads["embed"]).sum(axis=1) > 0)
    else:
        assert isinstance(grads["embed"], RowGrad)
        np.testing.assert_array_equal(grads["embed"].rows, [1, 3, 5])
        assert np.all(np.abs(grads["embed"].values).sum(axis=1) > 0)
