"""Autoencoder.decode's default ("auto"): one shot when XLA's memory estimate of the one-shot program (one
chunk's, scaled to the length) fits in the memory free on the device, chunks of 128 frames otherwise; the user
can still force either. Choosing compiles no one-shot program."""

import contextlib

import jax
import jax.monitoring
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
    need = ae.one_shot_bytes(1, 600)
    assert 600 * 2048 * 2 * 4 <= need < 1 << 30   # at least the output, well under a GiB for this model
    memory = ae._decode.lower({"params": ae.params}, jax.ShapeDtypeStruct((1, 600, ae.latent_dim), np.float32)
                              ).compile().memory_analysis()
    exact = memory.temp_size_in_bytes + memory.output_size_in_bytes
    assert exact <= need <= 1.01 * exact   # the scaled estimate: the one-shot program's own figure, rounded up

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


@contextlib.contextmanager
def counting_compiles(fun_name: str = "jit(apply)"):
    """The number of XLA backend compilations of `fun_name` (the autoencoder's jitted module.apply) inside the
    block (a list holding one count)."""
    count = [0]

    def listener(name, seconds, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration" and kwargs.get("fun_name") == fun_name:
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_chunked_decode_of_a_new_length_compiles_nothing(monkeypatch):
    """Choosing the decode compiles no one-shot program: the estimate comes from the chunk's program, compiled
    once per model and the same one the chunks run; a canvas of a new length then decodes with no compile."""
    tiny = {**NARROW_SAO, "downsampling_ratio": 4}   # a 4x decoder: chunks cost next to nothing
    for part in ("encoder", "decoder"):
        tiny[part] = {"type": "oobleck", "config": {**NARROW_SAO[part]["config"], "c_mults": [1, 1], "strides": [2, 2]}}
    ae = Autoencoder.from_config(tiny, seed=1)
    monkeypatch.setattr(ae_module, "free_memory_bytes", lambda device=None: 1000)   # too little: chunk
    rng = np.random.default_rng(1)
    with counting_compiles() as first:
        ae.decode(rng.standard_normal((1, ae.latent_dim, 300)).astype(np.float32))
    assert first[0] == 1   # the chunk's program only, measured and then run
    for frames in (301, 517):   # new lengths, chunked: nothing more
        with counting_compiles() as count:
            y = ae.decode(rng.standard_normal((1, ae.latent_dim, frames)).astype(np.float32))
        assert count[0] == 0 and y.shape == (1, 2, frames * 4)
    assert ae._decode._cache_size() == 1
