"""Central finite differences, for the float64 gradient checks."""

import numpy as np


def numeric_grad(f, param: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() for every entry of ``param`` (changed in place,
    then restored)."""
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
    return num
