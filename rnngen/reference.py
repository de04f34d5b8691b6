"""The model's math in plain NumPy: a reference to read, and to check the fast path against.

Training runs the recurrence in Numba kernels and the big products in BLAS, arranged for
speed (a whole chunk's input projection in one product, gates fused, work on two threads).
This module computes the same loss, gradients and final state the plain way, in the style
of Karpathy's min-char-rnn: one time step at a time, each forward pass next to its BPTT
twin, one line per formula. It imports NumPy only. ``tests/test_reference.py`` checks it
against :meth:`rnngen.model.Model.loss_and_grads` (equal to float64 rounding) and against
finite differences::

    from rnngen import reference
    nll, grads, state, dstate0 = reference.loss_and_grads(model.params, model.config,
                                                           inputs, targets, state, masks)

One chunk of T steps, a batch of B streams, L layers (k = 0..L-1), masks m (all ones
without dropout):

    x^0_t = E[x_t] * m_0               embedding row of token x_t, dropped out
    h^k_t = cell(x^k_t, h^k_{t-1})     layer k; h^k_{-1} is the state carried in
    x^{k+1}_t = h^k_t * m_{k+1}        its output, dropped out, is the next layer's input
    o_t = x^L_t V + c                  logits over the vocabulary
    p_t = softmax(o_t)                 (or the class-factored p, see class_softmax; or the
                                        hierarchical one, see hierarchical_softmax)
    NLL = -Σ_t Σ_b log p_t[x_{t+1}]    the chunk's summed NLL; gradients are of NLL / B

The names follow the code (``embed``, ``l<k>.W_x`` ...); the notation table that maps them
to the textbook's E, U, W, V, c is in :mod:`rnngen.model`'s docstring and the README. The
code multiplies row vectors: ``x_t U`` is the textbook's ``U x_t`` with U transposed.
D is the embedding size, H the hidden size, C the number of classes, |V| the vocabulary.
Parameters are a dict ``{name: array}`` as in :class:`rnngen.model.Model`; ``config`` is a
:class:`rnngen.model.ModelConfig` (any object with the same fields will do).
"""

from __future__ import annotations

from functools import partial

import numpy as np

# --- helpers --------------------------------------------------------------------------


def sigmoid(a):
    return 1 / (1 + np.exp(-a))                                    # σ(a) = 1 / (1 + e^-a)


def log_softmax(o):
    m = o.max(axis=1, keepdims=True)                               # shift: e^(o-m) cannot overflow
    return o - m - np.log(np.exp(o - m).sum(axis=1, keepdims=True))   # log p = o - log Σ e^o


def onehot(y, n):
    return np.eye(n)[y]                                            # row i: 1 at column y[i]


# --- vanilla RNN: s_t = f(x_t U + b + s_{t-1} W) --------------------------------------


def rnn_forward(P, x, state0, relu=False):
    """x (T, B, n_in), state0 (1, B, H) -> (h (T, B, H), final state (1, B, H), cache)."""
    s = {-1: state0[0]}
    for t in range(len(x)):
        a = x[t] @ P["W_x"] + P["b"] + s[t - 1] @ P["W_h"]        # a_t = x_t U + b + s_{t-1} W
        s[t] = np.maximum(a, 0) if relu else np.tanh(a)            # s_t = f(a_t)
    h = np.stack([s[t] for t in range(len(x))])
    return h, h[-1][None], (x, s)


def rnn_backward(P, cache, dh, relu=False):
    """dh = dL/dh_t from above (T, B, H) -> (dL/dx, {dL/dparam}, dL/dstate0)."""
    x, s = cache
    dP = {k: np.zeros_like(v) for k, v in P.items()}
    dx = np.empty_like(x)
    ds_next = np.zeros_like(s[-1])                                 # dL/ds_t through s_{t+1}
    for t in reversed(range(len(x))):
        ds = dh[t] + ds_next                                       # from above and from t+1
        da = ds * (s[t] > 0) if relu else ds * (1 - s[t] ** 2)     # f'(a_t): [s > 0], or 1 - s²
        dP["W_x"] += x[t].T @ da                                   # dU += x_t^T da_t
        dP["b"] += da.sum(axis=0)                                  # db += Σ_b da_t
        dP["W_h"] += s[t - 1].T @ da                               # dW += s_{t-1}^T da_t
        dx[t] = da @ P["W_x"].T                                    # dx_t = da_t U^T
        ds_next = da @ P["W_h"].T                                  # ds_{t-1} = da_t W^T
    return dx, dP, ds_next[None]


# --- GRU (PyTorch / cuDNN): blocks [r, z, n], b_hn inside the reset ---------------------
# b = [b_r, b_z, b_n] is PyTorch's b_ih + b_hh for r and z, and its b_in for n; b_hn is
# PyTorch's b_hh for n, kept apart because r multiplies it.


def gru_forward(P, x, state0):
    """x (T, B, n_in), state0 (1, B, H) -> (h (T, B, H), final state (1, B, H), cache)."""
    h, gates = {-1: state0[0]}, {}
    for t in range(len(x)):
        xr, xz, xn = np.split(x[t] @ P["W_x"] + P["b"], 3, axis=1)   # x_t U + b
        hr, hz, hn = np.split(h[t - 1] @ P["W_h"], 3, axis=1)        # h_{t-1} W
        r = sigmoid(xr + hr)                                       # r = σ(x U_r + b_r + h W_r)
        z = sigmoid(xz + hz)                                       # z = σ(x U_z + b_z + h W_z)
        hn = hn + P["b_hn"]                                        # hn = h W_n + b_hn
        n = np.tanh(xn + r * hn)                                   # n = tanh(x U_n + b_n + r*hn)
        h[t] = (1 - z) * n + z * h[t - 1]                          # h_t = (1-z)*n + z*h_{t-1}
        gates[t] = r, z, n, hn
    out = np.stack([h[t] for t in range(len(x))])
    return out, out[-1][None], (x, h, gates)


def gru_backward(P, cache, dh):
    """dh = dL/dh_t from above (T, B, H) -> (dL/dx, {dL/dparam}, dL/dstate0)."""
    x, h, gates = cache
    dP = {k: np.zeros_like(v) for k, v in P.items()}
    dx = np.empty_like(x)
    dh_next = np.zeros_like(h[-1])                                 # dL/dh_t through h_{t+1}
    for t in reversed(range(len(x))):
        r, z, n, hn = gates[t]
        dht = dh[t] + dh_next                                      # from above and from t+1
        dn = dht * (1 - z)                                         # h_t = (1-z)*n + z*h_{t-1}
        dz = dht * (h[t - 1] - n)
        dan = dn * (1 - n ** 2)                                    # n = tanh(a_n): tanh'
        dr = dan * hn                                              # a_n = x U_n + b_n + r*hn
        dhn = dan * r
        dar, daz = dr * r * (1 - r), dz * z * (1 - z)              # σ' = σ(1-σ)
        dxp = np.concatenate((dar, daz, dan), axis=1)              # d(x_t U + b)
        dhp = np.concatenate((dar, daz, dhn), axis=1)              # d(h_{t-1} W), n block via r
        dP["W_x"] += x[t].T @ dxp                                  # dU += x_t^T d(x_t U + b)
        dP["b"] += dxp.sum(axis=0)
        dP["W_h"] += h[t - 1].T @ dhp                              # dW += h_{t-1}^T d(h_{t-1} W)
        dP["b_hn"] += dhn.sum(axis=0)
        dx[t] = dxp @ P["W_x"].T                                   # dx_t = d(x_t U + b) U^T
        dh_next = dht * z + dhp @ P["W_h"].T                       # dh_{t-1}: via z*h_{t-1}, via W
    return dx, dP, dh_next[None]


# --- LSTM: blocks [i, f, g, o], c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t) ---------------


def lstm_forward(P, x, state0):
    """x (T, B, n_in), state0 (2, B, H) = [h, c] -> (h (T, B, H), final [h, c], cache)."""
    h, c, gates = {-1: state0[0]}, {-1: state0[1]}, {}
    for t in range(len(x)):
        a = x[t] @ P["W_x"] + P["b"] + h[t - 1] @ P["W_h"]        # a_t = x_t U + b + h_{t-1} W
        ai, af, ag, ao = np.split(a, 4, axis=1)                    # blocks [i, f, g, o]
        i, f, g, o = sigmoid(ai), sigmoid(af), np.tanh(ag), sigmoid(ao)   # i = σ(a_i), ...
        c[t] = f * c[t - 1] + i * g                                # c_t = f*c_{t-1} + i*g
        h[t] = o * np.tanh(c[t])                                   # h_t = o*tanh(c_t)
        gates[t] = i, f, g, o
    out = np.stack([h[t] for t in range(len(x))])
    return out, np.stack((h[len(x) - 1], c[len(x) - 1])), (x, h, c, gates)


def lstm_backward(P, cache, dh):
    """dh = dL/dh_t from above (T, B, H) -> (dL/dx, {dL/dparam}, dL/dstate0 = [dh, dc])."""
    x, h, c, gates = cache
    dP = {k: np.zeros_like(v) for k, v in P.items()}
    dx = np.empty_like(x)
    dh_next = np.zeros_like(h[-1])                                 # dL/dh_t through step t+1
    dc_next = np.zeros_like(c[-1])                                 # dL/dc_t through step t+1
    for t in reversed(range(len(x))):
        i, f, g, o = gates[t]
        tc = np.tanh(c[t])
        dht = dh[t] + dh_next                                      # from above and from t+1
        do = dht * tc                                              # h_t = o*tanh(c_t)
        dct = dc_next + dht * o * (1 - tc ** 2)
        di, df, dg = dct * g, dct * c[t - 1], dct * i              # c_t = f*c_{t-1} + i*g
        dc_next = dct * f
        da = np.concatenate((di * i * (1 - i), df * f * (1 - f),   # σ', σ', tanh', σ'
                             dg * (1 - g ** 2), do * o * (1 - o)), axis=1)
        dP["W_x"] += x[t].T @ da                                   # dU += x_t^T da_t
        dP["b"] += da.sum(axis=0)
        dP["W_h"] += h[t - 1].T @ da                               # dW += h_{t-1}^T da_t
        dx[t] = da @ P["W_x"].T                                    # dx_t = da_t U^T
        dh_next = da @ P["W_h"].T                                  # dh_{t-1} = da_t W^T
    return dx, dP, np.stack((dh_next, dc_next))


CELLS = {"rnn": (rnn_forward, rnn_backward), "gru": (gru_forward, gru_backward),
         "lstm": (lstm_forward, lstm_backward)}


def cell_functions(config):
    """(forward, backward) of the config's cell; the RNN's with its activation bound."""
    forward, backward = CELLS[config.cell]
    if config.cell == "rnn":
        relu = config.activation == "relu"
        return partial(forward, relu=relu), partial(backward, relu=relu)
    return forward, backward


# --- output layers: loss and its gradient, for rows h (N, H) and targets y (N,) --------


def full_softmax(h, y, V, c, scale):
    """L = -scale Σ log p[y], p = softmax(h V + c) -> (log p[y], dL/dh, dL/dV, dL/dc)."""
    o = h @ V + c                                                  # o = h V + c
    logp = log_softmax(o)                                          # log p = log softmax(o)
    do = scale * (np.exp(logp) - onehot(y, o.shape[1]))            # dL/do = s (p - y)
    dh, dV, dc = do @ V.T, h.T @ do, do.sum(axis=0)                # dh = do V^T, dV = h^T do, dc = Σ do
    return logp[np.arange(len(y)), y], dh, dV, dc


def class_softmax(h, y, V, c, V_C, c_C, bounds, scale):
    """Mikolov et al. 2011: p(y | h) = p(k | h) p(y | k, h), k = class(y), a class being the
    ids bounds[j]..bounds[j+1]-1. -> (log p[y], dL/dh, dL/dV, dL/dc, dL/dV_C, dL/dc_C)."""
    word_class = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))   # class of each id
    k = word_class[y]                                              # the targets' classes
    logp_k, dh, dV_C, dc_C = full_softmax(h, k, V_C, c_C, scale)   # log p(k | h), over the classes
    in_k = word_class[None, :] == k[:, None]                       # (N, |V|): words of y's class
    o = np.where(in_k, h @ V + c, -np.inf)                         # o = h V + c within the class
    logp = log_softmax(o)                                          # log p(w | k, h); p = 0 outside k
    do = scale * (np.exp(logp) - onehot(y, o.shape[1]))            # dL/do = s (p - y), 0 outside k
    dh = dh + do @ V.T                                             # dh = do_C V_C^T + do V^T
    return logp_k + logp[np.arange(len(y)), y], dh, h.T @ do, do.sum(axis=0), dV_C, dc_C


def hierarchical_softmax(h, y, W, b, tree, scale):
    """p(y | h) = Π over the inner nodes n on y's path of σ(z_n) (y under n's first child)
    or σ(-z_n) (under its second), z_n = h · W_n + b_n; ``tree`` lists node n's children at
    2n, 2n+1 (ids < |V| words, |V| + m inner node m). -> (log p[y], dL/dh, dL/dW, dL/db)."""
    parent = {child: divmod(k, 2) for k, child in enumerate(tree)}   # id -> (inner node, 0 first / 1 second)
    z = h @ W.T + b                                                # z_n = h · W_n + b_n, every node n
    logp, dz = np.zeros(len(y)), np.zeros_like(z)
    for i, node in enumerate(y):
        while node in parent:                                      # from the leaf up to the root
            n, second = parent[node]
            logp[i] += np.log(sigmoid(-z[i, n] if second else z[i, n]))   # log p += log σ(±z_n)
            dz[i, n] = scale * (sigmoid(z[i, n]) - (1 - second))   # dL/dz_n = s (σ(z_n) - [first])
            node = len(tree) // 2 + 1 + n                          # up: inner node n's id
    return logp, dz @ W, dz.T @ h, dz.sum(axis=0)                  # dh = dz W, dW = dz^T h, db = Σ dz


def output_layer(params, config, h, y, scale):
    """The config's softmax over rows h -> (log p[y], dL/dh, gradients of out.*, cls.*, and
    when tied of embed)."""
    if config.softmax == "hs":
        logp, dh, dW, db = hierarchical_softmax(h, y, params["hs.W"], params["hs.b"], config.tree, scale)
        return logp, dh, {"hs.W": dW, "hs.b": db}
    V = params["embed"].T if config.tie_weights else params["out.W"]   # tied: V = E^T
    grads = {}
    if config.softmax == "class":
        logp, dh, dV, grads["out.b"], grads["cls.W"], grads["cls.b"] = class_softmax(
            h, y, V, params["out.b"], params["cls.W"], params["cls.b"], config.class_bounds, scale)
    else:
        logp, dh, dV, grads["out.b"] = full_softmax(h, y, V, params["out.b"], scale)
    if config.tie_weights:
        grads["embed"] = dV.T                                      # dE gets dV^T (and dx_t below)
    else:
        grads["out.W"] = dV
    return logp, dh, grads


# --- the whole model over one chunk --------------------------------------------------


def dropout_masks(rng, config, T, B, dtype=np.float64):
    """Inverted dropout: m = bernoulli(keep) / keep, so E[m] = 1 and evaluation needs no
    rescaling. One mask per non-recurrent connection: the embedding and each layer's output
    (the top one before the softmax); never the recurrence. Same draws as Model.dropout_masks."""
    keep = 1.0 - config.dropout
    sizes = [config.embed or config.hidden] + [config.hidden] * config.layers
    return [(rng.random((T, B, d)) < keep).astype(dtype) / dtype(keep) for d in sizes]


def layer_params(params, k):
    """Layer k's parameters without their prefix: l<k>.W_x -> W_x."""
    return {name.split(".", 1)[1]: v for name, v in params.items() if name.startswith(f"l{k}.")}


def forward(params, config, inputs, state, masks=None):
    """Token ids (T, B), state (L, P, B, H) -> (top-layer outputs x^L (T, B, H), caches,
    final state (L, P, B, H))."""
    cell_forward, _ = cell_functions(config)
    x = params["embed"][inputs]                                    # E[x_t]
    if masks is not None:
        x = x * masks[0]                                           # x^0_t = E[x_t] * m_0
    caches, final = [], np.empty_like(state)
    for k in range(config.layers):
        # h^k_t = cell(x^k_t, h^k_{t-1}) for t = 0..T-1, from h^k_{-1} = state[k]
        h, final[k], cache = cell_forward(layer_params(params, k), x, state[k])
        caches.append(cache)
        x = h if masks is None else h * masks[k + 1]               # x^{k+1}_t = h^k_t * m_{k+1}
    return x, caches, final


def backward(params, config, caches, dtop, masks=None):
    """Twin of forward: dL/dx^L (T, B, H) -> (dL/dE[x_t] (T, B, D), {dL/dparam} of the
    layers, dL/dstate (L, P, B, H))."""
    _, cell_backward = cell_functions(config)
    dx, grads, dstate = dtop, {}, []
    for k in reversed(range(config.layers)):
        dh = dx if masks is None else dx * masks[k + 1]            # x^{k+1} = h^k * m_{k+1}
        dx, dP, ds = cell_backward(layer_params(params, k), caches[k], dh)
        grads.update({f"l{k}.{name}": g for name, g in dP.items()})
        dstate.insert(0, ds)
    de = dx if masks is None else dx * masks[0]                    # x^0 = E[x_t] * m_0
    return de, grads, np.stack(dstate)


def loss_and_grads(params, config, inputs, targets, state, masks=None):
    """Truncated BPTT over one chunk, as Model.loss_and_grads: token ids inputs/targets (T, B),
    carried state (L, P, B, H), dropout masks or None. Returns (summed NLL of the chunk,
    gradients of NLL / B in ``params``' order, final state, dL/dstate). Training treats the
    carried state as a constant and drops dL/dstate; it is returned to check the BPTT."""
    T, B = inputs.shape
    top, caches, final = forward(params, config, inputs, state, masks)
    h, y = top.reshape(T * B, -1), targets.reshape(-1)             # rows: (t, b) pairs
    logp, dtop, grads = output_layer(params, config, h, y, 1 / B)  # L = NLL / B
    de, layer_grads, dstate = backward(params, config, caches, dtop.reshape(T, B, -1), masks)
    grads.update(layer_grads)
    dE = grads.get("embed", np.zeros_like(params["embed"]))        # tied: dV^T already in it
    np.add.at(dE, inputs, de)                                      # dE[x_t] += de_t
    grads["embed"] = dE
    return -float(logp.sum()), {name: grads[name] for name in params}, final, dstate
