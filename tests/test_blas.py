"""Which BLAS pool gets the threads: NumPy's or the one the Numba kernels call."""

import os
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest

from rnngen import blas
from rnngen.blas import choice, threads
from rnngen.lanes import Lanes
from rnngen.model import Model, ModelConfig


def test_recurrent_weights_outgrow_a_2_mb_cache_from_lstm_400(monkeypatch):
    monkeypatch.setattr(threads, "l2_cache_bytes", lambda: 2 << 20)
    assert blas.recurrence_outgrows_cache(650, 4)           # 6.8 MB
    assert blas.recurrence_outgrows_cache(400, 4)           # 2.6 MB
    assert not blas.recurrence_outgrows_cache(200, 4)       # 0.6 MB
    assert not blas.recurrence_outgrows_cache(650, 1)       # vanilla RNN, 1.7 MB


@pytest.mark.parametrize("size, expected", [("2048K", 2 << 20), ("1M", 1 << 20), ("junk", 1 << 20)])
def test_l2_cache_size_from_sysfs(tmp_path, size, expected):
    for index, (level, kind, value) in enumerate([("1", "Data", "48K"), ("2", "Unified", size),
                                                  ("3", "Unified", "307200K")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(level + "\n")
        (folder / "type").write_text(kind + "\n")
        (folder / "size").write_text(value + "\n")
    assert blas.l2_cache_bytes(str(tmp_path)) == expected
    assert blas.l2_cache_bytes(str(tmp_path / "missing")) == 1 << 20


@pytest.mark.parametrize("job, hidden, lines, to_kernels", [("sample", 200, 1, True), ("sample", 200, 100, False),
                                                            ("score", 200, 1, False), ("score", 650, 1, True),
                                                            ("train", 650, 1, False)])
def test_the_job_decides_which_pool_gets_the_threads(monkeypatch, job, hidden, lines, to_kernels):
    monkeypatch.setattr(threads, "l2_cache_bytes", lambda: 2 << 20)
    given = []
    monkeypatch.setattr(threads, "give_threads", lambda count, kernels: given.append((count, kernels)))
    blas.use_threads(2, job, hidden, 4, lines)
    assert given == [(2, to_kernels)]


THREADS = r"""
from rnngen import blas, jit
from rnngen import kernels  # registers the kernels and their set-up
blas.give_threads(2, to_kernels=True)          # before Numba and SciPy are loaded
jit.compile_all()
print(blas.thread_count("scipy"), blas.thread_count("numpy"))
blas.give_threads(2, to_kernels=False)
print(blas.thread_count("scipy"), blas.thread_count("numpy"))
"""


def test_threads_given_before_numba_loads_survive_its_set_up():
    proc = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["2 1", "1 2"], proc.stdout


# --- products on MKL (the optional mkl extra) --------------------------------------------

# MKL's own tests force it on (the chooser may prefer OpenBLAS on this CPU): they need it installed only.
needs_mkl = pytest.mark.skipif(not blas.mkl_installed(), reason="MKL (the mkl extra) is not installed")
FORCE_MKL = {"RNNGEN_BLAS": "mkl"}


@pytest.fixture
def mkl_calls(monkeypatch):
    """NumPy's BLAS on one thread (as in a lane), and what MKL ran: ``.sgemm`` lists each
    product's (m, n, k), ``.packed`` each product's with a packed operand (blas.Packed),
    ``.exp`` each exp's length."""
    from rnngen.blas import mkl

    real, calls = mkl.load(), types.SimpleNamespace(sgemm=[], packed=[], exp=[])

    def sgemm(*args):
        calls.sgemm.append(args[3:6])
        return real.sgemm(*args)

    def compute(*args):
        calls.packed.append(args[3:6])
        return real.compute(*args)

    def exp(n, *rest):
        calls.exp.append(n)
        return real.exp(n, *rest)

    monkeypatch.setattr(threads, "_numpy_threads", 1)
    monkeypatch.setattr(choice, "active_mkl", lambda: types.SimpleNamespace(sgemm=sgemm, exp=exp, gemm=real.gemm,
                                                                     pack_size=real.pack_size, pack=real.pack,
                                                                     compute=compute))
    return calls


def _operands(seed: int, a_shape, b_shape, case: str):
    """A generator and random operands of a product: float32, or float64 for ``case`` "float64"."""
    rng = np.random.default_rng(seed)
    dtype = np.float64 if case == "float64" else np.float32
    return rng, rng.standard_normal(a_shape).astype(dtype), rng.standard_normal(b_shape).astype(dtype)


def _layouts(rng, rows, cols):
    """The same (rows, cols) float32 matrix as stored, as a transposed view, and as a column slice."""
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    wide = rng.standard_normal((rows, cols + 7)).astype(np.float32)
    wide[:, 3:3 + cols] = x
    return {"stored": x, "transposed": np.ascontiguousarray(x.T).T, "slice": wide[:, 3:3 + cols]}


@needs_mkl
@pytest.mark.parametrize("layout_a", ["stored", "transposed", "slice"])
@pytest.mark.parametrize("layout_b", ["stored", "transposed", "slice"])
@pytest.mark.parametrize("into", ["new", "slice"])
def test_mkl_products_match_numpy_in_every_layout(mkl_calls, layout_a, layout_b, into):
    rng = np.random.default_rng(0)
    a, b = _layouts(rng, 37, 53)[layout_a], _layouts(rng, 53, 29)[layout_b]
    expected = a.astype(np.float64) @ b.astype(np.float64)
    if into == "new":
        got = blas.matmul(a, b)
    else:
        wide = np.full((37, 40), 5.0, dtype=np.float32)
        got = blas.matmul(a, b, out=wide[:, 6:35])
        assert got.base is wide or got.base is wide.base
        assert (wide[:, :6] == 5).all() and (wide[:, 35:] == 5).all()      # only its columns written
    assert mkl_calls.sgemm == [(37, 29, 53)]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@needs_mkl
@pytest.mark.parametrize("case", ["float64", "strided", "aliased", "empty", "threaded"])
def test_products_mkl_cannot_take_go_to_numpy(mkl_calls, monkeypatch, case):
    rng, a, b = _operands(1, (12, 12), (12, 12), case)
    out = None
    if case == "strided":
        big = rng.standard_normal((24, 24)).astype(np.float32)
        a = big[::2, ::2]                              # neither axis contiguous
    elif case == "aliased":
        a = a.copy()
        out = a                                        # written while read
    elif case == "empty":
        a, b = a[:, :0], b[:0]
    else:
        monkeypatch.setattr(threads, "_numpy_threads", 2)  # NumPy splits it: MKL stays on one thread
    expected = np.matmul(a.copy(), b)
    np.testing.assert_allclose(blas.matmul(a, b, out=out), expected, rtol=1e-5, atol=1e-5)
    assert mkl_calls.sgemm == []


@needs_mkl
def test_rnngen_blas_openblas_turns_mkl_off():
    code = "from rnngen import blas; print(blas.product_library())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RNNGEN_BLAS": "openblas"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "openblas"


KERNEL_PRODUCTS = r"""
import sys
import numpy as np
from rnngen import blas, kernels
if sys.argv[2] == "threaded":
    blas.give_threads(2, to_kernels=True)
rng = np.random.default_rng(0)
T, B, H = 3, 4, 8
out = [np.empty((T, B, H), np.float32) for _ in range(3)] + [np.empty((T, B, 4 * H), np.float32)]
args = [rng.standard_normal((T, B, 4 * H)).astype(np.float32), rng.standard_normal((H, 4 * H)).astype(np.float32),
        np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)]
print("kernel", flush=True)
kernels.lstm_forward(*args, *out)
print("done", flush=True)
np.save(sys.argv[1], out[0])
"""


def _kernel_products(tmp_path, how: str, env: dict) -> tuple[list[str], np.ndarray]:
    """An LSTM forward kernel (batch 4, hidden 8) in a fresh process with MKL_VERBOSE=1:
    the lines MKL printed while the kernel ran, and the kernel's h."""
    out = tmp_path / f"{how}.npy"
    proc = subprocess.run([sys.executable, "-c", KERNEL_PRODUCTS, str(out), how], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MKL_VERBOSE": "1", **env})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    return lines[lines.index("kernel") + 1:lines.index("done")], np.load(out)


@needs_mkl
def test_kernel_products_run_on_mkl_unless_the_kernels_have_threads(tmp_path):
    on_mkl, h = _kernel_products(tmp_path, "one-thread", FORCE_MKL)
    products = [line for line in on_mkl if "SGEMM(n,n,32,4,8," in line]        # h_{t-1} W_h: 4 x 8 @ 8 x 32
    assert len(products) == 3, on_mkl                                           # one per time step
    for how, env in [("threaded", FORCE_MKL), ("openblas", {"RNNGEN_BLAS": "openblas"})]:
        lines, h_other = _kernel_products(tmp_path, how, env)
        assert not [line for line in lines if "GEMM" in line], (how, lines)
        np.testing.assert_allclose(h, h_other, rtol=1e-5, atol=1e-6)


SCIPY_AFTER_KERNELS = r"""
import numpy as np
from rnngen import kernels
kernels.rnn_forward(np.ones((2, 2, 3)), np.eye(3), np.zeros((2, 3)), False, np.empty((2, 2, 3)))   # float64: dgemm
from scipy.cluster.vq import vq
from scipy.linalg import qr, qr_update
rng = np.random.default_rng(0)
a, u, v = rng.standard_normal((6, 6)), rng.standard_normal(6), rng.standard_normal(6)
q1, r1 = qr_update(*qr(a), u, v)
assert np.allclose(q1 @ r1, a + np.outer(u, v))
obs, book = rng.standard_normal((500, 40)), rng.standard_normal((50, 40))   # large enough for its GEMM path
print("vq", flush=True)
codes, _ = vq(obs, book)
print("end", flush=True)
assert (codes == ((obs[:, None] - book[None]) ** 2).sum(-1).argmin(1)).all()
"""


@needs_mkl
def test_scipy_still_works_after_the_kernels_ran_and_calls_mkl():
    """The kernels' GEMM entries in SciPy's cython_blas table now point at MKL: SciPy's own
    Cython modules that import them afterwards (its QR update, k-means) must load, agree,
    and call MKL's DGEMM."""
    proc = subprocess.run([sys.executable, "-c", SCIPY_AFTER_KERNELS], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MKL_VERBOSE": "1", **FORCE_MKL})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    during_vq = lines[lines.index("vq") + 1:lines.index("end")]
    assert any("DGEMM(" in line for line in during_vq), proc.stdout


@needs_mkl
def test_an_mkl_without_its_core_libraries_is_not_used(tmp_path):
    """MKL loads its core on the first product and ends the process if it is missing."""
    import glob
    import shutil

    (tmp_path / "lib").mkdir()
    for path in glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")):
        shutil.copy(path, tmp_path / "lib")
    code = f"import sys; sys.prefix = {str(tmp_path)!r}; from rnngen import blas; print(blas.product_library())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUSERBASE": str(tmp_path / "nobody"), "RNNGEN_BLAS": "auto"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "openblas"


@needs_mkl
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_a_training_step_on_two_lanes_agrees_with_and_without_mkl(mkl_calls, monkeypatch, cell):
    """Loss and every gradient of a float32 step, its products on MKL or on NumPy: the layouts
    the output layer and the cells hand to sgemm are read as NumPy reads them."""
    config = ModelConfig(vocab_size=300, cell=cell, hidden=48, layers=2, embed=32)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 300, (12, 6)), rng.integers(0, 300, (12, 6))
    results = {}
    for use_mkl in (True, False):
        if not use_mkl:
            monkeypatch.setattr(choice, "active_mkl", lambda: None)
        model = Model.init(config, seed=3)
        assert model.dtype == np.float32
        with blas.numpy_threads(1):
            results[use_mkl] = model.loss_and_grads(x, y, model.zero_state(6), None, Lanes(2))
    shapes = {(n, k) for m, n, k in mkl_calls.sgemm}              # (columns, inner) of each product
    assert {(300, 49), (48, 300)} <= shapes                       # the output layer's, forward and back
    assert (192 if cell == "lstm" else 48, 32) in shapes          # layer 0's input projection
    (nll, grads, state), (nll0, grads0, state0) = results[True], results[False]
    assert nll == pytest.approx(nll0, rel=1e-5)
    np.testing.assert_allclose(state, state0, rtol=1e-4, atol=1e-6)
    assert grads.keys() == grads0.keys()
    for name in grads:
        np.testing.assert_allclose(grads[name], grads0[name], rtol=1e-3, atol=1e-6, err_msg=name)


@needs_mkl
@pytest.mark.parametrize("layout_b", ["stored", "transposed", "slice"])
def test_products_with_a_packed_operand_match_sgemm(mkl_calls, layout_b):
    rng = np.random.default_rng(6)
    b = _layouts(rng, 53, 29)[layout_b]
    packed = blas.Packed(b)
    for rows in (1, 2, 7, 37, 300):
        for layout_a, a in _layouts(rng, rows, 53).items():
            expected = blas.matmul(a, b)
            wide = np.full((rows, 40), 5.0, dtype=np.float32)
            got = packed.matmul(a, out=wide[:, 6:35])
            assert mkl_calls.packed[-1] == (rows, 29, 53)
            assert (wide[:, :6] == 5).all() and (wide[:, 35:] == 5).all()
            # MKL may block a packed product differently from sgemm (and one row as a GEMV), so
            # the last bits may differ; a wrong row or column would be off by far more.
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=layout_a)


@needs_mkl
@pytest.mark.parametrize("case", ["float64", "no mkl", "threaded", "wrong shape"])
def test_packed_operands_mkl_cannot_take_go_to_matmul(mkl_calls, monkeypatch, case):
    _, a, b = _operands(7, (12, 20), (20, 9), case)
    if case == "no mkl":
        monkeypatch.setattr(choice, "active_mkl", lambda: None)
    elif case == "threaded":
        monkeypatch.setattr(threads, "_numpy_threads", 2)
    packed = blas.Packed(b)
    if case == "wrong shape":
        with pytest.raises(ValueError):
            packed.matmul(a[:, :7])
        return
    np.testing.assert_allclose(packed.matmul(a), a @ b, rtol=1e-5, atol=1e-5)
    assert mkl_calls.packed == []


@needs_mkl
def test_scoring_packs_the_output_weights_once_per_job_and_never_keeps_stale_ones(mkl_calls, monkeypatch):
    """Log-probabilities with the packed weights are those without (to float32 rounding: MKL
    may sum a packed product in another order); weights changed between two jobs (training
    between validations) are packed again."""
    from rnngen import score

    model = Model.init(ModelConfig(vocab_size=300, cell="rnn", hidden=48), seed=5)
    ids = np.random.default_rng(8).integers(1, 300, 700)
    monkeypatch.setattr(score, "PACK_MIN_ROWS", 100)
    packs = []
    real_init = blas.Packed.__init__

    def counted_init(self, *args, **kwargs):
        packs.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(blas.Packed, "__init__", counted_init)
    for _ in range(2):
        with blas.numpy_threads(1):
            packed = score.stream_logprob(model, ids)
        assert len(packs) == 1 and len(mkl_calls.packed) > 1    # one pack, many products with it
        monkeypatch.setattr(score, "PACK_MIN_ROWS", 10 ** 9)
        mkl_calls.packed.clear()
        with blas.numpy_threads(1):
            plain = score.stream_logprob(model, ids)
        assert mkl_calls.packed == []
        assert packed[1] == plain[1] and packed[0] == pytest.approx(plain[0], rel=1e-6)
        model.params["out.W"] += 0.5                             # in place, as an optimiser does
        monkeypatch.setattr(score, "PACK_MIN_ROWS", 100)
        packs.clear()


@needs_mkl
def test_mkl_exp_matches_numpy_and_saturates_quietly(mkl_calls):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((64, 301)) * 20).astype(np.float32)
    x[0, :4] = [100.0, -200.0, np.nan, 0.0]            # overflow, underflow, NaN, exact 1
    expected = np.exp(x.astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no RuntimeWarning either way
        blas.exp_in_place(x)
    assert mkl_calls.exp == [64 * 301]
    small = np.ones(blas.VML_MIN_SIZE - 1, dtype=np.float32)
    blas.exp_in_place(small)                           # NumPy's: faster than a call into MKL
    assert mkl_calls.exp == [64 * 301] and np.allclose(small, np.e)
    assert x[0, 0] == np.inf and x[0, 1] == 0 and np.isnan(x[0, 2]) and x[0, 3] == 1
    finite = np.isfinite(expected) & (expected > 1e-30) & (expected < 1e30)
    np.testing.assert_allclose(x[finite], expected[finite], rtol=5e-7)


@pytest.mark.parametrize("case", ["float64", "column slice", "no mkl"])
def test_exp_in_place_falls_back_to_numpy(monkeypatch, case):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((20, 30)) * 3).astype(np.float64 if case == "float64" else np.float32)
    if case == "no mkl":
        monkeypatch.setattr(choice, "active_mkl", lambda: None)
    if case == "column slice":
        x = x[:, 5:]                                   # not one contiguous block
    x[0, 0] = 1000.0                                   # overflows in float32 and float64
    expected = np.exp(x[1:].astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blas.exp_in_place(x)
    assert x[0, 0] == np.inf
    np.testing.assert_allclose(x[1:], expected, rtol=5e-7 if x.dtype == np.float32 else 1e-15)
