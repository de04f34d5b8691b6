"""The fused optimiser updates against their textbook formulas, clipping folded in."""

import math

import numpy as np
import pytest

from rnngen.lanes import SERIAL, Lanes
from rnngen.optim import SPLIT_MIN, Adagrad, Adam, RowGrad, clip_scale, global_norm, make_optimizer


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


def row_grad(rng, shape, ids):
    """A RowGrad from token ids (repeats included) and its dense twin, built with np.add.at."""
    dx = rng.normal(size=(len(ids), shape[1]))
    dense = np.zeros(shape)
    np.add.at(dense, ids, dx)
    return RowGrad.of_rows(ids, dx, shape), dense


def test_row_grad_sums_the_rows_of_repeated_tokens():
    rng = np.random.default_rng(1)
    ids = np.array([4, 1, 4, 9, 1, 4], dtype=np.int32)
    g, dense = row_grad(rng, (12, 3), ids)
    np.testing.assert_array_equal(g.rows, [1, 4, 9])
    np.testing.assert_allclose(g.dense(), dense, rtol=1e-15)
    np.testing.assert_allclose(np.asarray(g), dense, rtol=1e-15)
    assert g.shape == (12, 3) and g.dtype == np.float64
    assert global_norm({"e": g}) == pytest.approx(np.sqrt((dense ** 2).sum()), rel=1e-14)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_row_gradients_update_like_their_dense_twins(name):
    """SGD and Adagrad touch only the gradient's rows; Adam moves the others by momentum, so
    it takes the dense gradient. Either way the result is the dense update's."""
    rng = np.random.default_rng(2)
    p0 = rng.normal(size=(10, 4))
    sparse, dense = {"e": p0.copy()}, {"e": p0.copy()}
    opt_sparse, opt_dense = make_optimizer(name, sparse), make_optimizer(name, dense)
    for ids in ([1, 3, 3], [0, 7], [2, 2, 5]):
        g, g_dense = row_grad(rng, p0.shape, np.array(ids))
        opt_sparse.step(sparse, {"e": g}, 0.1, 0.5)
        opt_dense.step(dense, {"e": g_dense}, 0.1, 0.5)
    np.testing.assert_allclose(sparse["e"], dense["e"], rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(sparse["e"][[4, 6, 8, 9]], p0[[4, 6, 8, 9]])    # never had a gradient


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_big_arrays_split_over_lanes_update_as_one(name):
    """An array past SPLIT_MIN is updated and summed in one piece per lane: the same update
    (elementwise, so to the bit) and the same norm as on one thread."""
    rng = np.random.default_rng(3)
    shape = (SPLIT_MIN // 100 + 1, 100)
    p0, g = rng.normal(size=shape), {"w": rng.normal(size=shape), "b": rng.normal(size=7)}
    results = []
    for lanes in (SERIAL, Lanes(2)):
        params = {"w": p0.copy(), "b": np.zeros(7)}
        opt = make_optimizer(name, params)
        for _ in range(2):
            opt.step(params, g, 0.1, 0.5, lanes)
        results.append((params["w"], global_norm(g, lanes)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-14)
    assert results[0][1] == pytest.approx(np.sqrt((g["w"] ** 2).sum() + (g["b"] ** 2).sum()), rel=1e-14)
    np.testing.assert_allclose(results[0][0], reference(name, p0, [g["w"]] * 2, 0.1, 0.5, 2), rtol=1e-10, atol=1e-12)
