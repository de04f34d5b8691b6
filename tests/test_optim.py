"""The fused optimiser updates against their textbook formulas, clipping folded in."""

import math

import numpy as np
import pytest

from rnngen.optim import Adagrad, Adam, clip_scale, global_norm, make_optimizer


def reference(name, p, grads, lr, scale, steps):
    """Plain NumPy versions of the update rules, in float64."""
    m = v = acc = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g * scale
        if name == "sgd":
            p = p - lr * g
        elif name == "adagrad":
            acc = acc + g * g
            p = p - lr * g / (np.sqrt(acc) + Adagrad.eps)
        else:
            m = Adam.beta1 * m + (1 - Adam.beta1) * g
            v = Adam.beta2 * v + (1 - Adam.beta2) * g * g
            m_hat, v_hat = m / (1 - Adam.beta1 ** t), v / (1 - Adam.beta2 ** t)
            p = p - lr * m_hat / (np.sqrt(v_hat) + Adam.eps / math.sqrt(1 - Adam.beta2 ** t))
    return p


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_updates_match_formulas(name):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(7, 5))
    grads = [rng.normal(size=(7, 5)) for _ in range(4)]
    params = {"w": p0.copy()}
    opt = make_optimizer(name, params)
    for g in grads:
        opt.step(params, {"w": g}, 0.1, 0.5)
    assert np.allclose(params["w"], reference(name, p0, grads, 0.1, 0.5, 4), rtol=1e-10, atol=1e-12)


def test_global_norm_and_clip_scale():
    grads = {"a": np.full((3, 4), 2.0, dtype=np.float32), "b": np.array([3.0, 4.0], dtype=np.float32)}
    norm = global_norm(grads)
    assert norm == pytest.approx(math.sqrt(12 * 4 + 25))
    assert clip_scale(norm, 5.0) * norm == pytest.approx(5.0, rel=1e-6)
    assert clip_scale(norm, 100.0) == 1.0 and clip_scale(norm, 0.0) == 1.0
    assert math.isnan(global_norm({"a": np.array([np.nan], dtype=np.float32)})) or \
        math.isinf(global_norm({"a": np.array([np.nan], dtype=np.float32)}))
