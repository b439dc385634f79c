"""The Fréchet distance between two Gaussians fitted to embeddings, the running statistics that fit
them with bounded memory, and the reference-statistics files (`.npz`) that let a reference set be
embedded once.

The distance follows stable-audio-metrics (after pytorch-fid) exactly: float64,
d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrtm(S1 S2)) with scipy's `sqrtm`; when the square root
of the product is not finite, eps * I is added to both covariances and it is taken again; an
imaginary part is dropped when the diagonal's is within 1e-3 of zero, and is an error otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from sa_jax.errors import CheckpointError

log = logging.getLogger("sa_jax")

# The key names stable-audio-metrics writes and reads (`np.savez(path, mu_ref=..., sigma_ref=...)`).
MU_KEY, SIGMA_KEY = "mu_ref", "sigma_ref"


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"the mean vectors differ in length ({mu1.shape[0]} vs {mu2.shape[0]}): the two sets were "
                         "embedded differently (another model, embedding size or channel count)")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"covariances {sigma1.shape} and {sigma2.shape} do not fit means of length {mu1.shape[0]}")
    for what, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{what} holds NaN or infinite values")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # A (nearly) singular product, e.g. fewer frames than dimensions.
        log.warning("Fréchet distance: the covariance product is singular; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"the square root of the covariance product has an imaginary component "
                             f"{np.max(np.abs(covmean.imag)):.3g} (more than numerical error)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


class RunningStats:
    """Mean and covariance (`np.cov(rowvar=False)`: divided by n - 1) of rows added batch by batch,
    in float64, holding only (dim,) + (dim, dim) however many rows come (Chan's pairwise merge, so
    no precision is lost to a large mean)."""

    def __init__(self):
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None    # sum of outer products of deviations from the mean

    def add(self, rows) -> None:
        rows = np.asarray(rows, np.float64)
        if rows.ndim != 2:
            raise ValueError(f"embeddings to add must be (rows, dim), got shape {rows.shape}")
        if not len(rows):
            return
        if self.mean is not None and rows.shape[1] != self.mean.shape[0]:
            raise ValueError(f"embedding of size {rows.shape[1]} added to statistics of size {self.mean.shape[0]}")
        n, mean = len(rows), rows.mean(axis=0)
        centred = rows - mean
        m2 = centred.T @ centred
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + np.outer(delta, delta) * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma). Needs at least two rows (a covariance of one row is undefined)."""
        if self.count < 2:
            raise ValueError(f"statistics need at least 2 embedding frames, got {self.count}")
        return self.mean.copy(), self.m2 / (self.count - 1)


def embedding_statistics(embeddings) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of (rows, dim) embeddings: `np.mean(axis=0)`, `np.cov(rowvar=False)`."""
    stats = RunningStats()
    stats.add(embeddings)
    return stats.result()


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, embedding: str = "", count: int = 0) -> Path:
    """Write reference statistics as stable-audio-metrics does (`mu_ref`, `sigma_ref` in an `.npz`),
    plus which embedding made them and from how many frames; written atomically."""
    import os
    import uuid

    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"statistics file {path} must end in .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}.npz"
    try:
        np.savez(tmp, **{MU_KEY: np.asarray(mu, np.float64), SIGMA_KEY: np.asarray(sigma, np.float64)},
                 embedding=np.array(embedding), count=np.array(count))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_stats(path: str | Path, embedding: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from an `.npz` holding `mu_ref`/`sigma_ref` (stable-audio-metrics' files and
    ours) or `mu`/`sigma`. With `embedding`, a file that names another embedding is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {path} do not exist (write them with --save-stats)")
    try:
        data = np.load(path, allow_pickle=False)
        keys = set(data.files)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable .npz statistics file ({e})") from None
    for mu_key, sigma_key in ((MU_KEY, SIGMA_KEY), ("mu", "sigma")):
        if mu_key in keys and sigma_key in keys:
            break
    else:
        raise CheckpointError(f"{path} holds {sorted(keys)}; reference statistics need 'mu_ref' and 'sigma_ref' "
                              "(or 'mu' and 'sigma')")
    if embedding is not None and "embedding" in keys:
        made_by = str(data["embedding"])
        if made_by and made_by != embedding:
            raise CheckpointError(f"{path} holds statistics of the embedding '{made_by}', not of '{embedding}'")
    mu, sigma = np.asarray(data[mu_key], np.float64), np.asarray(data[sigma_key], np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
        raise CheckpointError(f"{path}: mean {mu.shape} and covariance {sigma.shape} do not fit together")
    return mu, sigma
