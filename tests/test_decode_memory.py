"""Autoencoder.decode's default ("auto"): one shot when XLA's memory estimate of the one-shot program fits in
the memory free on the device, chunks of 128 frames otherwise; the user can still force either."""

import numpy as np
import pytest
from test_autoencoder_api import NARROW_SAO, rel_err

from sa_jax import Autoencoder
from sa_jax import autoencoder as ae_module


@pytest.fixture(scope="module")
def ae_and_latents():
    ae = Autoencoder.from_config(NARROW_SAO, seed=0)
    z = np.random.default_rng(0).standard_normal((1, ae.latent_dim, 600)).astype(np.float32)   # 27.9 s
    return ae, z


def test_auto_decodes_one_shot_when_it_fits_and_chunks_when_not(ae_and_latents, monkeypatch):
    ae, z = ae_and_latents
    once, chunked = ae.decode(z, chunk_frames=None), ae.decode(z, chunk_frames=128)
    assert rel_err(chunked, once) < 1e-5   # the paths agree (the chunk overlap is past the receptive field)

    monkeypatch.setattr(ae_module, "free_memory_bytes", lambda device=None: 1 << 40)
    assert ae.decode_chunk_frames(z.shape) is None
    np.testing.assert_array_equal(ae.decode(z), once)
    need = ae._one_shot[(1, 600, ae.latent_dim)][1]
    assert 600 * 2048 * 2 * 4 <= need < 1 << 30   # at least the output, well under a GiB for this model

    monkeypatch.setattr(ae_module, "free_memory_bytes", lambda device=None: need)   # half of it is too little
    assert ae.decode_chunk_frames(z.shape) == 128
    np.testing.assert_array_equal(ae.decode(z), chunked)
    np.testing.assert_array_equal(ae.decode(z, chunk_frames=None), once)   # forced one shot, memory or not

    monkeypatch.setattr(ae_module, "free_memory_bytes", lambda device=None: None)   # unknown: chunk
    assert ae.decode_chunk_frames(z.shape) == 128
    assert ae.decode_chunk_frames((1, ae.latent_dim, 100)) == 128   # one chunk: nothing to choose


def test_free_memory_is_known_here():
    free = ae_module.free_memory_bytes()
    assert free is not None and free > 1 << 20


@pytest.mark.parametrize("bad", [0, -4, 1.5, "one shot", True])
def test_bad_chunk_frames_is_named(ae_and_latents, bad):
    ae, z = ae_and_latents
    with pytest.raises(ValueError, match="chunk_frames must be a positive int, None .one shot. or 'auto'"):
        ae.decode(z, chunk_frames=bad)
