"""sa_jax.metrics: the Fréchet distance against the reference's scipy formula, running statistics
against np.cov, and the reference-statistics files."""

import numpy as np
import pytest
from scipy import linalg

from sa_jax.errors import CheckpointError
from sa_jax.metrics.frechet import RunningStats, embedding_statistics, frechet_distance, load_stats, save_stats


def reference_fd(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """stable-audio-metrics' calculate_frechet_distance, written out for the comparison."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _sets(rng, n1=300, n2=250, dim=16):
    a = rng.normal(size=(n1, dim)) @ rng.normal(size=(dim, dim)) * 0.5
    b = rng.normal(size=(n2, dim)) @ rng.normal(size=(dim, dim)) * 0.5 + 0.3
    return a, b


def test_frechet_distance_matches_the_scipy_formula():
    rng = np.random.default_rng(0)
    a, b = _sets(rng)
    s1, s2 = (np.mean(a, 0), np.cov(a, rowvar=False)), (np.mean(b, 0), np.cov(b, rowvar=False))
    got = frechet_distance(*s1, *s2)
    assert isinstance(got, float) and got > 0
    np.testing.assert_allclose(got, reference_fd(*s1, *s2), rtol=1e-10)
    assert abs(frechet_distance(*s1, *s1)) < 1e-6       # a set against itself
    # float32 inputs are taken to float64 first
    np.testing.assert_allclose(frechet_distance(*(x.astype(np.float32) for x in (*s1, *s2))),
                               reference_fd(*(x.astype(np.float32).astype(np.float64) for x in (*s1, *s2))),
                               rtol=1e-8)


def test_singular_product_adds_eps_and_imaginary_part_is_an_error():
    rng = np.random.default_rng(1)
    dim = 8
    a, b = rng.normal(size=(3, dim)), rng.normal(size=(4, dim))      # fewer rows than dims: singular
    s1, s2 = (a.mean(0), np.cov(a, rowvar=False)), (b.mean(0), np.cov(b, rowvar=False))
    np.testing.assert_allclose(frechet_distance(*s1, *s2), reference_fd(*s1, *s2), rtol=1e-6)
    eye = np.eye(2)
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), eye, np.zeros(2), -eye)
    with pytest.raises(ValueError, match="differ in length"):
        frechet_distance(np.zeros(2), eye, np.zeros(3), np.eye(3))


def test_running_stats_match_np_cov_over_batches():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1000, 12)) * 3 + 1000.0       # a large mean: the merge must not lose precision
    stats = RunningStats()
    for chunk in np.array_split(x, [1, 7, 300, 301, 650]):
        stats.add(chunk)
    mu, sigma = stats.result()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        embedding_statistics(x[:1])


def test_reference_statistics_files(tmp_path):
    rng = np.random.default_rng(3)
    a, b = _sets(rng)
    mu_a, sigma_a = embedding_statistics(a)
    mu_b, sigma_b = embedding_statistics(b)
    # a file as stable-audio-metrics writes it loads and gives the FD of recomputing
    theirs = tmp_path / "ref.npz"
    np.savez(theirs, mu_ref=np.mean(b, 0), sigma_ref=np.cov(b, rowvar=False))
    np.testing.assert_allclose(frechet_distance(mu_a, sigma_a, *load_stats(theirs)),
                               frechet_distance(mu_a, sigma_a, mu_b, sigma_b), rtol=1e-10)
    # ours round-trips, carries its embedding's name, and the reference's own reader takes it
    ours = save_stats(tmp_path / "ours.npz", mu_b, sigma_b, embedding="openl3 x", count=len(b))
    loaded = np.load(ours)
    np.testing.assert_array_equal(loaded["mu_ref"], mu_b)
    np.testing.assert_array_equal(load_stats(ours, embedding="openl3 x")[1], sigma_b)
    with pytest.raises(CheckpointError, match="not of 'clap'"):
        load_stats(ours, embedding="clap")
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(CheckpointError, match="mu_ref"):
        load_stats(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="--save-stats"):
        load_stats(tmp_path / "none.npz")


def test_stream_batches_windows_of_many_files_and_returns_them_in_order():
    from sa_jax.metrics.batching import BatchedModel, stream

    model = BatchedModel(lambda v, x: x.sum(axis=-1) * v, np.float32(2.0), batch_size=4)
    rng = np.random.default_rng(5)
    items = [(f"f{i}", [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes])
             for i, sizes in enumerate([(3, 3), (0, 1), (7,), (1, 2, 5), (2,)])]
    seen, calls = [], []
    inner = model.fn
    model.fn = lambda v, x: calls.append(x.shape[0]) or inner(v, x)
    for item, outputs in stream(items, lambda it: it[1], model, workers=2, progress=lambda n: seen.append(n)):
        for w, out in zip(item[1], outputs):
            np.testing.assert_allclose(out, w.sum(-1) * 2, rtol=1e-6)
    assert len(seen) == len(items)
    assert sum(calls) >= 24 and all(c in (1, 2, 4) for c in calls) and calls.count(4) >= 5   # mostly full batches


def test_batched_model_splits_over_several_devices(tmp_path):
    """In a subprocess with 4 simulated CPU devices: the batch is a multiple of 4 and sharded over them."""
    import subprocess
    import sys

    code = ("import numpy as np, jax\n"
            "from sa_jax.metrics.batching import BatchedModel\n"
            "m = BatchedModel(lambda v, x: x * v, np.float32(3.0), batch_size=6)\n"
            "assert m.batch_size == 8 and m.mesh.size == 4, (m.batch_size, m.mesh.size)\n"
            "x = np.arange(22, dtype=np.float32)[:, None]\n"
            "y = m(x)\n"
            "assert y.shape == (22, 1) and np.allclose(y, x * 3)\n"
            "print('ok', len(m.data.mesh.devices.flat))\n")
    env = {**__import__("os").environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "ok 4" in r.stdout, r.stderr
