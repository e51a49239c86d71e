"""Solve with a shrunk covariance without ever forming a d x d matrix when features outnumber examples."""

import numpy as np
import scipy.linalg

from probes.errors import ProbeInputError


def _ledoit_wolf_shrinkage(small_gram: np.ndarray, row_norms: np.ndarray, n: int, d: int) -> float:
    """Ledoit-Wolf coefficient, the same formula as sklearn.covariance.ledoit_wolf_shrinkage, from traces.

    ||Z^T Z||_F = ||Z Z^T||_F, so the smaller Gram matrix and the rows' squared norms are all it needs.
    """
    if d == 1:
        return 0.0
    trace = row_norms.sum() / n
    mu = trace / d
    delta_ = np.sum(small_gram**2) / n**2
    beta = (np.sum(row_norms**2) / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


def shrunk_covariance_solve(Z: np.ndarray, v: np.ndarray, shrinkage: float | None = None) -> tuple[np.ndarray, float]:
    """Solve Sigma x = v for Sigma = (1 - a) Z^T Z / n + a mu I, mu = trace(Z^T Z / n) / d; return (x, a).

    Z holds centred rows (n x d); a is Ledoit-Wolf's coefficient when `shrinkage` is None. With d > n it
    uses Woodbury's identity, Sigma^-1 v = (v - b Z^T (c I_n + b Z Z^T)^-1 Z v) / c with c = a mu,
    b = (1 - a) / n, so memory stays O(n d + n^2).
    """
    n, d = Z.shape
    v = np.asarray(v, dtype=np.float64)
    row_norms = np.einsum("ij,ij->i", Z, Z, dtype=np.float64)
    small_gram = (Z.T @ Z if d <= n else Z @ Z.T).astype(np.float64)
    a = _ledoit_wolf_shrinkage(small_gram, row_norms, n, d) if shrinkage is None else float(shrinkage)
    c, b = a * row_norms.sum() / (n * d), (1.0 - a) / n
    try:
        if d <= n:
            return scipy.linalg.solve(b * small_gram + c * np.eye(d), v, assume_a="pos"), a
        if c <= 0:
            raise np.linalg.LinAlgError
        inner = scipy.linalg.solve(c * np.eye(n) + b * small_gram, Z @ v.astype(Z.dtype), assume_a="pos")
        return (v - b * (Z.T @ inner.astype(Z.dtype))) / c, a
    except np.linalg.LinAlgError as error:
        raise ProbeInputError(
            f"the shrunk within-class covariance (shrinkage {a:.3g}) is singular; use a shrinkage above 0"
        ) from error
