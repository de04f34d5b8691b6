"""Analytic BPTT gradients against central finite differences, in float64."""

import numpy as np
import pytest

from rnngen.model import Model, ModelConfig

V, T, B = 7, 5, 3


def chunk_loss_check(config: ModelConfig, seed: int = 0, with_dropout: bool = False):
    """Max relative error over every parameter (and the carried-in state) for the
    second of two chunks, its initial state carried over from the first."""
    rng = np.random.default_rng(seed)
    model = Model.init(config, seed=seed, dtype=np.float64)
    # Larger-than-default weights so the non-linearities are exercised, not just linear.
    for k, v in model.params.items():
        v += rng.normal(0, 0.3, v.shape)
    ids = rng.integers(0, V, size=(2 * T + 1, B)).astype(np.int32)
    state0 = model.zero_state(B)
    _, _, carried = model.loss_and_grads(ids[:T], ids[1:T + 1], state0)
    assert np.abs(carried).max() > 0.05  # the second chunk really starts from a carried state
    x, y = ids[T:2 * T], ids[T + 1:2 * T + 1]
    masks = model.dropout_masks(rng, T, B) if with_dropout else None

    def f():
        return model.loss_and_grads(x, y, carried, masks)[0] / B

    _, grads, _ = model.loss_and_grads(x, y, carried, masks)
    worst = 0.0
    eps = 1e-6
    for name, param in model.params.items():
        num = np.zeros_like(param)
        flat, nflat = param.reshape(-1), num.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = f()
            flat[i] = old - eps
            down = f()
            flat[i] = old
            nflat[i] = (up - down) / (2 * eps)
        err = np.abs(num - grads[name]).max() / max(np.abs(num).max(), np.abs(grads[name]).max(), 1e-8)
        assert err < 1e-5, f"{name}: relative error {err:.2e}"
        worst = max(worst, err)
    return worst


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_vanilla_rnn_gradients(activation):
    chunk_loss_check(ModelConfig(vocab_size=V, cell="rnn", hidden=4, embed=3,
                                 activation=activation))


def test_two_layer_tied_rnn_with_dropout_mask():
    chunk_loss_check(ModelConfig(vocab_size=V, cell="rnn", hidden=4, layers=2,
                                 tie_weights=True, dropout=0.3), with_dropout=True)
