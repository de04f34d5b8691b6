"""Numba kernels: the per-time-step recurrence of each cell, forward and backward.
(Registered with ``jit.kernel``: compiled on first use, run as Python for tiny jobs.)

Each kernel runs a whole chunk of T time steps for a batch of B streams. The input
projection ``x_t U + b`` of the whole chunk is one matrix product done by the caller
(``xproj``), and so are the weight gradients afterwards; what must run step by step —
the recurrent product ``s_{t-1} W`` and the elementwise non-linearities — runs here.

Conventions: arrays are C-contiguous, time-major ``(T, B, ...)``; weights are stored
input-major (``W`` has shape ``(H, G*H)``) so that a row of states times ``W`` gives the
gate pre-activations. Backward kernels write ``dpre``, the gradient of the loss with
respect to ``xproj`` (the GRU also ``drec``, with respect to ``s_{t-1} W``, which differs
in its candidate block), and return the gradient with respect to the initial state.
"""

import numpy as np

from .blas import apply_kernel_threads, load_kernel_blas
from .jit import LOOP_OPTIONS, SUM_OPTIONS, before_compile, kernel

# --- non-linearities ----------------------------------------------------------------

def tanh(a):
    """tanh inside kernels: exact in float64 (gradient checks); in float32 a rational
    approximation (Eigen's, max error 4e-7) that LLVM vectorises. Numba's libm tanh is a
    scalar call per value that no loop can vectorise, and the gated cells call it for every
    hidden unit of every step."""
    return np.tanh(a)


def _tanh_float32(a):
    a = min(max(a, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
    a2 = a * a
    p = np.float32(-2.76076847742355e-16)
    p = p * a2 + np.float32(2.00018790482477e-13)
    p = p * a2 + np.float32(-8.60467152213735e-11)
    p = p * a2 + np.float32(5.12229709037114e-08)
    p = p * a2 + np.float32(1.48572235717979e-05)
    p = p * a2 + np.float32(6.37261928875436e-04)
    p = p * a2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * a2 + np.float32(1.18534705686654e-04)
    q = q * a2 + np.float32(2.26843463243900e-03)
    q = q * a2 + np.float32(4.89352518554385e-03)
    return a * p / q


def sigmoid(a):
    """σ(a) = 1 / (1 + e^{-a}); in float32 computed as (1 + tanh(a/2)) / 2 to vectorise."""
    return 1.0 / (1.0 + np.exp(-a))


@before_compile
def _numba_setup():
    """Before compiling: the BLAS that Numba's np.dot calls (SciPy's) and its threads, and the
    float32 forms of tanh and σ that LLVM vectorises."""
    from numba import types
    from numba.extending import overload

    load_kernel_blas()
    apply_kernel_threads()

    @overload(tanh)
    def _tanh_overload(a):
        if a == types.float32:
            return _tanh_float32
        return lambda a: np.tanh(a)

    @overload(sigmoid)
    def _sigmoid_overload(a):
        if a == types.float32:
            half = np.float32(0.5)
            return lambda a: half * tanh(half * a) + half
        return lambda a: 1.0 / (1.0 + np.exp(-a))


# --- vanilla RNN: s_t = f(x_t U + s_{t-1} W + b) ------------------------------------

@kernel(**LOOP_OPTIONS)
def rnn_step(x_b, r_b, relu, s):
    """One row of one step: s = f(a), a = x_t U + b (x_b) + s_{t-1} W (r_b)."""
    zero = s.dtype.type(0.0)                                       # not 0.0: float64 arithmetic
    for j in range(len(s)):
        a = x_b[j] + r_b[j]
        s[j] = max(a, zero) if relu else tanh(a)                    # s_t = f(a_t)


@kernel(**LOOP_OPTIONS)
def rnn_forward(xproj, W, s0, relu, s):
    """Fill ``s[t]`` with s_t = f(x_t U + b + s_{t-1} W), f = tanh or relu."""
    T, B, H = s.shape
    rec = np.empty((B, H), dtype=s.dtype)
    s_prev = s0
    for t in range(T):
        np.dot(s_prev, W, rec)                                      # s_{t-1} W
        for b in range(B):
            rnn_step(xproj[t, b], rec[b], relu, s[t, b])
        s_prev = s[t]


@kernel(**LOOP_OPTIONS)
def rnn_backward(ds, s, W, relu, dpre):
    """BPTT through the chunk: ds[t] is dL/ds_t from above; returns dL/ds_0 (initial)."""
    T, B, H = s.shape
    ds_next = np.zeros((B, H), dtype=s.dtype)                      # dL/ds_t via s_{t+1}
    Wt = np.ascontiguousarray(W.T)                                 # MKL is slower with a transposed operand
    one, zero = s.dtype.type(1.0), s.dtype.type(0.0)               # not 1.0: float64 arithmetic
    for t in range(T - 1, -1, -1):
        for b in range(B):
            for j in range(H):
                g = ds[t, b, j] + ds_next[b, j]
                st = s[t, b, j]
                dpre[t, b, j] = (g if st > zero else zero) if relu else g * (one - st * st)   # f'(a_t)
        np.dot(dpre[t], Wt, ds_next)                                # dL/ds_{t-1} = da_t W^T
    return ds_next


# --- LSTM ---------------------------------------------------------------------------
# Gate blocks of xproj / W_h / b, in this order, each H wide: [i, f, g, o].
#   i_t = σ(a_i)   f_t = σ(a_f)   g_t = tanh(a_g)   o_t = σ(a_o),   a = x_t W_x + b + h_{t-1} W_h
#   c_t = f*c_{t-1} + i*g        h_t = o*tanh(c_t)
# ``acts`` keeps the post-activation gates (T, B, 4H) and ``tc`` keeps tanh(c_t), for backward.

@kernel(**LOOP_OPTIONS)
def lstm_step(x_b, r_b, c_prev, a, c, tc, h):
    """One row of one step: gates ``a`` = [i, f, g, o] from x_t W_x + b (x_b) and h_{t-1} W_h
    (r_b), then c = c_t, tc = tanh(c_t), h = h_t. ``c`` may be ``c_prev`` (updated in place)."""
    H = len(h)
    for j in range(2 * H):
        a[j] = sigmoid(x_b[j] + r_b[j])                             # i = σ(a_i), f = σ(a_f)
    for j in range(2 * H, 3 * H):
        a[j] = tanh(x_b[j] + r_b[j])                                # g = tanh(a_g)
    for j in range(3 * H, 4 * H):
        a[j] = sigmoid(x_b[j] + r_b[j])                             # o = σ(a_o)
    for j in range(H):
        ct = a[H + j] * c_prev[j] + a[j] * a[2 * H + j]             # c_t = f*c_{t-1} + i*g
        c[j] = ct
        tc[j] = tanh(ct)
    for j in range(H):
        h[j] = a[3 * H + j] * tc[j]                                 # h_t = o*tanh(c_t)


@kernel(**LOOP_OPTIONS)
def lstm_forward(xproj, W, h0, c0, h, c, tc, acts):
    """Fill h[t], c[t], tc[t] = tanh(c_t) and acts[t] = [i, f, g, o] for the chunk, from (h0, c0)."""
    T, B, H = h.shape
    rec = np.empty((B, 4 * H), dtype=h.dtype)
    h_prev = h0
    c_prev = c0
    for t in range(T):
        np.dot(h_prev, W, rec)                                      # h_{t-1} W_h, all 4 gates
        for b in range(B):
            lstm_step(xproj[t, b], rec[b], c_prev[b], acts[t, b], c[t, b], tc[t, b], h[t, b])
        h_prev = h[t]
        c_prev = c[t]


@kernel(**LOOP_OPTIONS)
def lstm_step_backward(dh_above, dh_next, a, tc, c_prev, dc, d):
    """The backward twin of lstm_step for one row: from dh_t = dh_above + dh_next and dc =
    dL/dc_t via step t+1 (updated in place to dL/dc_{t-1}), the gate gradients
    ``d`` = [di, df, dg, do] = dL/da for a = [a_i, a_f, a_g, a_o]."""
    H = len(tc)
    one = tc.dtype.type(1.0)                                       # not 1.0: float64 arithmetic
    i, f, g, o = a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:]
    di, df, dg, do = d[:H], d[H:2 * H], d[2 * H:3 * H], d[3 * H:]
    for j in range(H):
        dht = dh_above[j] + dh_next[j]                              # dh_t (above + next step)
        dct = dc[j] + dht * o[j] * (one - tc[j] * tc[j])            # h_t = o*tanh(c_t)  -> dc_t
        do[j] = dht * tc[j] * o[j] * (one - o[j])                   #                    -> do, σ'
        di[j] = dct * g[j] * i[j] * (one - i[j])                    # c_t = f*c_{t-1} + i*g -> di
        df[j] = dct * c_prev[j] * f[j] * (one - f[j])               #                    -> df
        dg[j] = dct * i[j] * (one - g[j] * g[j])                    #                    -> dg, tanh'
        dc[j] = dct * f[j]                                          #                    -> dc_{t-1}


@kernel(**LOOP_OPTIONS)
def lstm_backward(dh, c, tc, acts, W, c0, dpre):
    """BPTT through the chunk: dh[t] is dL/dh_t from above. Writes dpre = dL/da (T, B, 4H),
    which is also dL/d(h_{t-1} W_h); returns (dL/dh_0, dL/dc_0) for the initial state."""
    T, B, H = c.shape
    dh_next = np.zeros((B, H), dtype=c.dtype)                      # dL/dh_t via step t+1
    dc_next = np.zeros((B, H), dtype=c.dtype)                      # dL/dc_t via step t+1
    Wt = np.ascontiguousarray(W.T)                                 # MKL is slower with a transposed operand
    for t in range(T - 1, -1, -1):
        c_prev = c0 if t == 0 else c[t - 1]
        for b in range(B):
            lstm_step_backward(dh[t, b], dh_next[b], acts[t, b], tc[t, b], c_prev[b], dc_next[b], dpre[t, b])
        np.dot(dpre[t], Wt, dh_next)                                # dh_{t-1} = da_t W_h^T
    return dh_next, dc_next


# --- GRU (PyTorch / cuDNN formulation) ----------------------------------------------
# Gate blocks of xproj / W_h / b, in this order, each H wide: [r, z, n]; b_hn is separate.
#   r = σ(x W_xr + b_r + h W_hr)          z = σ(x W_xz + b_z + h W_hz)
#   n = tanh(x W_xn + b_n + r*(h W_hn + b_hn))
#   h_t = (1-z)*n + z*h_{t-1}
# ``acts`` keeps [r, z, n] (T, B, 3H) and ``hn`` keeps h_{t-1} W_hn + b_hn (T, B, H).

@kernel(**LOOP_OPTIONS)
def gru_step(x_b, r_b, b_hn, h_prev, a, hn, h):
    """One row of one step from x_t W_x + b (x_b) and h_{t-1} W_h (r_b): gates ``a`` = [r, z, n],
    hn = h_{t-1} W_hn + b_hn, and h = h_t. ``h`` may be ``h_prev`` (updated in place)."""
    H = len(h)
    one = h.dtype.type(1.0)                                        # not 1.0: float64 arithmetic
    for j in range(H):
        r = sigmoid(x_b[j] + r_b[j])                                # r = σ(x W_xr + b_r + h W_hr)
        z = sigmoid(x_b[H + j] + r_b[H + j])                        # z = σ(x W_xz + b_z + h W_hz)
        hnj = r_b[2 * H + j] + b_hn[j]                              # hn = h W_hn + b_hn
        n = tanh(x_b[2 * H + j] + r * hnj)                          # n = tanh(x W_xn + b_n + r*hn)
        h[j] = (one - z) * n + z * h_prev[j]                        # h_t = (1-z)*n + z*h_{t-1}
        a[j] = r
        a[H + j] = z
        a[2 * H + j] = n
        hn[j] = hnj


@kernel(**LOOP_OPTIONS)
def gru_forward(xproj, W, b_hn, h0, h, acts, hn):
    """Fill h[t], acts[t] = [r, z, n] and hn[t] for the chunk, from h0."""
    T, B, H = h.shape
    rec = np.empty((B, 3 * H), dtype=h.dtype)
    h_prev = h0
    for t in range(T):
        np.dot(h_prev, W, rec)                                      # h_{t-1} W_h, all 3 gates
        for b in range(B):
            gru_step(xproj[t, b], rec[b], b_hn, h_prev[b], acts[t, b], hn[t, b], h[t, b])
        h_prev = h[t]


@kernel(**LOOP_OPTIONS)
def gru_step_backward(dh_above, dh_next, h_prev, a, hn, d, drec, dh_direct):
    """The backward twin of gru_step for one row: from dh_t = dh_above + dh_next, the gate
    gradients ``d`` = dL/d(xproj) = [dr, dz, dn], ``drec`` = dL/d(h_{t-1} W_h) (dn*r in the n
    block) and dh_direct = dL/dh_{t-1} through z*h_{t-1}."""
    H = len(h_prev)
    one = h_prev.dtype.type(1.0)                                   # not 1.0: float64 arithmetic
    r, z, n = a[:H], a[H:2 * H], a[2 * H:]
    dr, dz, dn = d[:H], d[H:2 * H], d[2 * H:]
    for j in range(H):
        dht = dh_above[j] + dh_next[j]                              # dh_t (above + next step)
        dn[j] = dht * (one - z[j]) * (one - n[j] * n[j])            # h_t = (1-z)*n + ... -> dn, tanh'
        dz[j] = dht * (h_prev[j] - n[j]) * z[j] * (one - z[j])      #   ... -> dz, σ'
        dh_direct[j] = dht * z[j]                                   #   ... -> dh_{t-1} (direct)
        dr[j] = dn[j] * hn[j] * r[j] * (one - r[j])                 # n = tanh(.. + r*hn) -> dr, σ'
        drec[j] = dr[j]
        drec[H + j] = dz[j]
        drec[2 * H + j] = dn[j] * r[j]                              #   ... -> dhn = dn*r


@kernel(**LOOP_OPTIONS)
def gru_backward(dh, h, acts, hn, W, h0, dpre, drec):
    """BPTT through the chunk: dh[t] is dL/dh_t from above. Writes dpre = dL/d(xproj) and
    drec = dL/d(h_{t-1} W_h) (they differ in the n block by the factor r); returns dL/dh_0."""
    T, B, H = h.shape
    dh_next = np.zeros((B, H), dtype=h.dtype)                      # dL/dh_t via step t+1
    dh_direct = np.empty((B, H), dtype=h.dtype)                    # dL/dh_{t-1} through z*h_{t-1}
    Wt = np.ascontiguousarray(W.T)                                 # MKL is slower with a transposed operand
    for t in range(T - 1, -1, -1):
        h_prev = h0 if t == 0 else h[t - 1]
        for b in range(B):
            gru_step_backward(dh[t, b], dh_next[b], h_prev[b], acts[t, b], hn[t, b], dpre[t, b], drec[t, b],
                              dh_direct[b])
        np.dot(drec[t], Wt, dh_next)                                # dh_{t-1} = drec_t W_h^T
        for b in range(B):
            for j in range(H):
                dh_next[b, j] += dh_direct[b, j]                            #   + dh_t*z
    return dh_next


# --- embeddings ----------------------------------------------------

@kernel
def scatter_add_rows(dst, rows, src):
    """dst[rows[i]] += src[i]: the embedding gradient without a dense one-hot product."""
    n, d = src.shape
    for i in range(n):
        r = rows[i]
        for j in range(d):
            dst[r, j] += src[i, j]


# --- output layer ---------------------------------------------------------------------

@kernel(**LOOP_OPTIONS)
def softmax_xent_rows(logits, targets, scale, logp):
    """Per row i of ``logits``, in place, with p = softmax(o_i) and y the one-hot of targets[i]:
    logp[i] = log p[targets[i]] and o_i <- scale (p - y). For the class softmax's per-class
    blocks (a few rows of ~100 words), where the dozen NumPy calls it would take cost more
    than the arithmetic itself."""
    z = np.empty(logits.shape[0])
    for i in range(logits.shape[0]):
        o = logits[i]
        m = o.max()
        logp[i] = o[targets[i]] - m
        for j in range(o.shape[0]):
            o[j] = np.exp(o[j] - m)                                # e^(o - m): z >= 1
    softmax_grad_rows(logits, targets, scale, 0.0, np.inf, z)
    for i in range(logits.shape[0]):
        logp[i] -= np.log(z[i])                                    # log p = o - m - log z


@kernel(**LOOP_OPTIONS)
def class_softmax_rows(logits, bias, targets, scale, logp, dbias):
    """One class's block of the class softmax, logits o = h V_C (a few rows, the class's
    words): o_i += c_C, then as softmax_xent_rows (logp[i] = log p(targets[i] | class, h_i),
    o_i <- scale (p - y)), then dbias = sum_i o_i, the gradient of c_C. One call per class
    where NumPy would take a bias add, a dozen softmax calls and a column sum."""
    for i in range(logits.shape[0]):
        o = logits[i]
        for j in range(o.shape[0]):
            o[j] += bias[j]                                        # o = h V_C + c_C
    softmax_xent_rows(logits, targets, scale, logp)
    dbias[:] = 0
    for i in range(logits.shape[0]):
        o = logits[i]
        for j in range(o.shape[0]):
            dbias[j] += o[j]                                       # dc_C = sum_i do_i


@kernel(**SUM_OPTIONS)
def row_sum(row):
    """The sum of a row of floats, added up in float64: the softmax's normaliser."""
    total = 0.0
    for j in range(row.shape[0]):
        total += row[j]                                            # z = sum_j e^(o_j - s)
    return total


@kernel(**SUM_OPTIONS)
def row_sums(e, z):
    """z[i] = row_sum(e[i]): each row in one vectorised pass, added up in float64, where
    NumPy's row sums of float32 values round in float32."""
    for i in range(e.shape[0]):
        z[i] = row_sum(e[i])


@kernel(**SUM_OPTIONS)
def softmax_grad_rows(e, targets, scale, lo, hi, z):
    """Per row i of e = exp(o_i - s_i): z[i] = its sum (float64) and, when lo < z[i] < hi,
    e_i <- scale (e_i / z[i] - y_i) = scale (p - y), y the one-hot of targets[i], while the
    row is still in cache from the sum (NumPy would make a pass to sum and another to
    scale). Other rows (overflowed, near underflow, NaN) are left for the caller to redo."""
    for i in range(e.shape[0]):
        row = e[i]
        z[i] = row_sum(row)
        if lo < z[i] < hi:
            s = e.dtype.type(scale / z[i])                         # in e's precision: a float32 loop
            for j in range(row.shape[0]):
                row[j] *= s                                        # do = scale p ...
            row[targets[i]] -= scale                               #      - scale y


# --- hashed n-gram features (rnngen.maxent) --------------------------------------------

MIX = 0x5851F42D4C957F2D       # odd multiplier of the hash (< 2**63: also an int64 in Numba)
LOW62 = (1 << 62) - 1          # hash values kept to 62 bits: int64 in Numba and Python int agree


@kernel
def ngram_bases(words, mask, out):
    """out[n-2] = base of the n-gram context words[0..n-2] for n = 2 .. len(out)+1; words[0]
    is the newest input. Python ints and Numba's int64 give the same values (62-bit masks)."""
    h = 0x2545F4914F6CDD1D
    for j in range(out.shape[0]):
        h = ((h ^ (int(words[j]) + 1)) * MIX) & LOW62            # fold in the next older word
        out[j] = (h ^ (h >> 29)) & mask


@kernel
def context_bases(inputs, before, mask, out):
    """Bases (T, B, K) of each position's contexts: inputs (T, B), before (K-1, B) the inputs
    just before the chunk (oldest first)."""
    T, B = inputs.shape
    K = out.shape[2]
    words = np.empty(K, dtype=np.int64)
    for t in range(T):
        for b in range(B):
            for j in range(K):                                     # words[j] = x_{t-j}
                words[j] = inputs[t - j, b] if t - j >= 0 else before[K - 1 + t - j, b]
            ngram_bases(words, mask, out[t, b])


@kernel(**LOOP_OPTIONS)
def add_direct(logits, bases, direct, offset):
    """logits[i, j] += sum_k d[(bases[i, k] + offset + j) mod |d|]. A row is no wider than
    |d| (ModelConfig: direct_size >= vocabulary), so its slice wraps at most once."""
    size = direct.shape[0]
    width = logits.shape[1]
    for i in range(logits.shape[0]):
        row = logits[i]
        for k in range(bases.shape[1]):
            start = (bases[i, k] + offset) & (size - 1)
            head = min(width, size - start)                       # up to the end of d, then from 0
            for j in range(head):
                row[j] += direct[start + j]
            for j in range(head, width):
                row[j] += direct[j - head]


@kernel(**LOOP_OPTIONS)
def sgd_direct(direct, bases, dlogits, offset, step):
    """d[(bases[i, k] + offset + j) mod |d|] -= step * dlogits[i, j]: SGD on the hashed weights."""
    size = direct.shape[0]
    width = dlogits.shape[1]
    for i in range(dlogits.shape[0]):
        g = dlogits[i]
        for k in range(bases.shape[1]):
            start = (bases[i, k] + offset) & (size - 1)
            head = min(width, size - start)
            for j in range(head):
                direct[start + j] -= step * g[j]
            for j in range(head, width):
                direct[j - head] -= step * g[j]


@kernel(**LOOP_OPTIONS)
def sgd_direct_nodes(direct, bases, nodes, dz, step):
    """d[(bases[i, k] + nodes[i, j]) mod |d|] -= step * dz[i, j], for each row's nodes up to a -1."""
    mask = direct.shape[0] - 1
    for i in range(dz.shape[0]):
        for j in range(dz.shape[1]):
            if nodes[i, j] < 0:
                break
            for k in range(bases.shape[1]):
                direct[(bases[i, k] + nodes[i, j]) & mask] -= step * dz[i, j]


# --- sampling -----------------------------------------------------------------------

@kernel(**LOOP_OPTIONS)
def exp_nonpositive(a, shift, scale, out):
    """out[i] = exp((a[i] - shift) * scale) for arguments <= 0; returns the sum of out.

    Cephes' expf (x = k ln2 + r, a degree-7 polynomial for e^r, 2^k built from its bits),
    relative error ~2e-6 in float32, written so that LLVM vectorises it: Numba's own exp
    is a scalar libm call per value, and sampling takes the exp of every logit of every step."""
    n = len(a)
    bits = np.empty(n, dtype=np.int32)
    f = np.float32
    for i in range(n):
        x = max(f((a[i] - shift) * scale), f(-87.0))              # e^-87: smallest normal float32
        k = np.floor(x * f(1.44269504088896341) + f(0.5))          # k = round(x / ln 2)
        r = x - k * f(0.693359375) - k * f(-2.12194440e-4)         # r = x - k ln 2, |r| <= ln2 / 2
        p = f(1.9875691500e-4)
        p = p * r + f(1.3981999507e-3)
        p = p * r + f(8.3334519073e-3)
        p = p * r + f(4.1665795894e-2)
        p = p * r + f(1.6666665459e-1)
        p = p * r + f(5.0000001201e-1)
        out[i] = p * r * r + r + f(1.0)                            # e^r
        bits[i] = (np.int32(k) + np.int32(127)) << np.int32(23)    # 2^k as float32 bits
    pow2 = bits.view(np.float32)
    total = 0.0
    for i in range(n):
        out[i] *= pow2[i]                                          # e^x = 2^k e^r
        total += out[i]
    return total


@kernel
def sample_row(logits, temperature, top_k, top_p, u):
    """Draw one token id from one row of logits.

    p_i ∝ exp(logit_i / temperature), restricted to the ``top_k`` most likely tokens
    (0 = all) and then to the smallest most-likely set whose mass reaches ``top_p``;
    the draw inverts the CDF at the uniform ``u``. Temperature 0 is the argmax.
    """
    V = len(logits)
    if temperature == 0.0:
        return np.argmax(logits)
    probs = np.empty(V, dtype=np.float32)
    total = exp_nonpositive(logits, logits.max(), np.float32(1.0 / temperature), probs)
    if (0 < top_k < V) or top_p < 1.0:
        order = np.argsort(-probs, kind="mergesort")            # most likely first, stable
        keep = V if top_k <= 0 else min(top_k, V)
        total = 0.0
        for r in range(keep):
            total += probs[order[r]]
        if top_p < 1.0:
            cum = 0.0
            for r in range(keep):
                cum += probs[order[r]]
                if cum >= top_p * total:
                    keep = r + 1
                    total = cum
                    break
        target = u * total
        cum = 0.0
        for r in range(keep):
            cum += probs[order[r]]
            if cum > target:
                return order[r]
        return order[keep - 1]
    target = u * total
    cum = 0.0
    for i in range(V):
        cum += probs[i]
        if cum > target:
            return i
    return V - 1


@kernel
def sample_rows(logits, temperature, top_k, top_p, uniforms, out):
    """out[b] = a draw from row b of logits (see :func:`sample_row`), with uniform uniforms[b]."""
    for b in range(len(out)):
        out[b] = sample_row(logits[b], temperature, top_k, top_p, uniforms[b])


@kernel
def _logsumexp(a):
    m = a.max()
    return m + np.log(exp_nonpositive(a, m, np.float32(1.0), np.empty(len(a), dtype=np.float32)))


@kernel(**LOOP_OPTIONS)
def class_logprobs(logits, cls_logits, bounds):
    """In place, the word logits of each class c = [bounds[c], bounds[c+1]) become
    log p(w | h) = log p(c | h) + log p(w | c, h): the class softmax's exact distribution."""
    cls_norm = _logsumexp(cls_logits)
    for c in range(len(bounds) - 1):
        words = logits[bounds[c]:bounds[c + 1]]
        shift = cls_logits[c] - cls_norm - _logsumexp(words)
        for i in range(len(words)):
            words[i] += shift


@kernel
def log_sigmoid(z):
    """(log σ(z), σ(z)), stably: with e = e^-|z| <= 1 nothing overflows."""
    e = np.exp(-abs(z))
    one = e + 1                                                    # 1 + e^-|z|
    log_sig = min(z, 0) - np.log1p(e)                              # log σ(z) = min(z, 0) - log(1 + e^-|z|)
    return log_sig, (1 / one if z >= 0 else e / one)               # σ(z) = 1/(1+e^-z) = e^z/(1+e^z)


@kernel
def tree_logprobs(z, children, out, reach):
    """The hierarchical softmax's log p(w | h) for every word w into ``out`` (V,), from the
    logits z (V-1,) of the tree's inner nodes: node n's first child has p σ(z_n), its second
    σ(-z_n) (children (V-1, 2): ids < V words, V + m inner node m; parents after children).
    ``reach`` (V-1,) is scratch: log p(reaching inner node m)."""
    V = len(out)
    reach[V - 2] = 0.0                                             # the root
    for n in range(V - 2, -1, -1):                                 # parents before their children
        first, _ = log_sigmoid(np.float64(z[n]))                   # log σ(z_n)
        for side in range(2):
            logp = reach[n] + (first if side == 0 else first - z[n])   # log σ(-z) = log σ(z) - z
            child = children[n, side]
            if child < V:
                out[child] = logp
            else:
                reach[child - V] = logp


@kernel
def tree_logprobs_rows(z, children, out):
    """:func:`tree_logprobs` for each row of z (N, V-1) into out (N, V)."""
    reach = np.empty(z.shape[1])
    for i in range(z.shape[0]):
        tree_logprobs(z[i], children, out[i], reach)


RNN, LSTM, GRU = 0, 1, 2    # the ``cell`` codes of sample_lines


@kernel(**LOOP_OPTIONS)
def sample_lines(cell, relu, embed, W_x0, W_x, W_h, b, b_hn, out_W, out_b, cls_W, cls_b, bounds, children,
                 direct, read0, state0, first, eos, temperature, top_k, top_p, uniforms, generated):
    """Generate the lines of ``generated`` (m, max_length) side by side, all in this loop.

    Each step embeds the current tokens, steps every layer (layer weights stacked: W_x0 for
    layer 0, W_x[l-1] above it, W_h[l], b[l], b_hn[l] for the GRU), takes p(w | h) from the
    top layer (``bounds`` > 2 entries: class softmax; ``children`` not empty: hierarchical,
    out_W and out_b then the tree's inner nodes', see :func:`tree_logprobs`) and draws the
    next token of line i with uniforms[i, t]. A line that draws ``eos`` leaves the batch.
    All lines start from ``state0`` (layers, state parts, H) with input ``first``. With
    n-gram features (``read0`` (K,) not empty: the inputs read so far, newest first,
    ``first`` included) the logits add ``direct``'s weights (rnngen.maxent). Returns each
    line's length.
    """
    m, max_length = generated.shape
    L, H = W_h.shape[0], W_h.shape[1]
    dtype = embed.dtype
    h = np.empty((L, m, H), dtype=dtype)
    c = np.empty((L, m, H), dtype=dtype)                           # LSTM only
    for layer in range(L):
        for r in range(m):
            h[layer, r] = state0[layer, 0]
            c[layer, r] = state0[layer, state0.shape[1] - 1]
    acts = np.empty(W_h.shape[2], dtype=dtype)
    tc = np.empty(H, dtype=dtype)
    hn = np.empty(H, dtype=dtype)
    word_logp = np.empty(embed.shape[0], dtype=dtype)              # hierarchical: log p(w | h)
    reach = np.empty(len(children))                                # ... and its scratch
    lengths = np.full(m, max_length, dtype=np.int64)
    current = np.full(m, first, dtype=np.int64)
    K = read0.shape[0]
    read = np.empty((m, K), dtype=np.int64)                      # each line's last K inputs, newest first
    for r in range(m):
        read[r] = read0
    bases = np.empty((1, K), dtype=np.int64)
    V = out_W.shape[1]
    line = np.arange(m)                                 # the line each live row belongs to
    n = m
    for t in range(max_length):
        x = np.empty((n, embed.shape[1]), dtype=dtype)
        for r in range(n):
            x[r] = embed[current[r]]                                # e_t = E[x_t]
        for layer in range(L):
            xproj = np.dot(x, W_x0 if layer == 0 else W_x[layer - 1])
            rec = np.dot(h[layer, :n], W_h[layer])
            for r in range(n):
                xproj[r] += b[layer]
                if cell == RNN:
                    rnn_step(xproj[r], rec[r], relu, h[layer, r])
                elif cell == LSTM:
                    lstm_step(xproj[r], rec[r], c[layer, r], acts, c[layer, r], tc, h[layer, r])
                else:
                    gru_step(xproj[r], rec[r], b_hn[layer], h[layer, r], acts, hn, h[layer, r])
            x = h[layer, :n]
        logits = np.dot(x, out_W)                                   # h_t V (hierarchical: the nodes' h W_n)
        cls_logits = np.dot(x, cls_W)
        live = 0
        for r in range(n):
            logits[r] += out_b
            cls_logits[r] += cls_b
            if K > 0:
                ngram_bases(read[r], direct.shape[0] - 1, bases[0])
                add_direct(logits[r:r + 1], bases, direct, 0)           # + sum_n d[b_n + w] (hs: node w)
                if len(bounds) > 2:
                    add_direct(cls_logits[r:r + 1], bases, direct, V)   # + the class logits' own slice
            row = logits[r]
            if len(children):
                tree_logprobs(logits[r], children, word_logp, reach)
                row = word_logp
            elif len(bounds) > 2:
                class_logprobs(logits[r], cls_logits[r], bounds)
            token = sample_row(row, temperature, top_k, top_p, uniforms[line[r], t])
            generated[line[r], t] = token
            if token == eos:
                lengths[line[r]] = t
                continue
            if live != r:                                           # close the gap left by ended lines
                h[:, live] = h[:, r]
                c[:, live] = c[:, r]
                line[live] = line[r]
            for j in range(K - 1, 0, -1):
                read[live, j] = read[r, j - 1]
            if K > 0:
                read[live, 0] = token
            current[live] = token
            live += 1
        n = live
        if n == 0:
            break
    return lengths
