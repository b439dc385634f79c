"""LoRA adapters in use: `StableAudio.load(base, lora=[...])` on tiny random models of both families
(sao: T5 + DiT, sa1: CLAP-style text tower + U-Net): strength 0 is the base bit for bit, several
adapters add up with their strengths, a merged model generates what the unmerged one does, and
adapters that do not belong to the model are refused (or, trained on other weights, warned about)."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax import StableAudio
from sa_jax.checkpoints import lora as lora_io
from sa_jax.errors import LoraError
from sa_jax.nn import lora

WORDS = "a drum loop rain on the roof bells piano bright dark soft loud bass synth pad noise".split()
SAMPLING = {"steps": 3, "seed": 7, "cfg_scale": 3.0}
PROMPTS = ["rain on the roof", "bright bells"]


def _random(module, *inputs, seed: int):
    """Random float32 parameters for a Flax module, filled on the host from its parameter shapes (no
    compiled init, which is slow on a busy CPU): kernels ~ N(0, 1/fan_in), norm scales ~ 1, the rest small,
    so every layer (also those a real init zeroes) takes part."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(path[-1].key)
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if len(leaf.shape) >= 2:
            return noise / np.sqrt(np.prod(leaf.shape[:-1]))
        return 1.0 + 0.05 * noise if name in ("scale", "gamma") else 0.05 * noise
    return jax.tree_util.tree_map_with_path(fill, shapes)


def tiny_model(family: str) -> StableAudio:
    """A tiny random whole model of `family` (window: 32 latent frames of a 32x VAE, 1024 samples)."""
    from training_util import TINY_VAE

    from sa_jax.autoencoder import Autoencoder
    from sa_jax.families import SamplingDefaults
    from sa_jax.models.autoencoder import AudioAutoencoder, config_from_dict
    from sa_jax.text_tokenizer import build_word_tokenizer

    tok = build_word_tokenizer([" ".join(WORDS)], model_max_length=8)
    ids, mask, z = jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), bool), jnp.zeros((1,))
    if family == "sao":
        from sa_jax.encoders import T5TextEncoder
        from sa_jax.families.sao import SAOFamily
        from sa_jax.models.conditioners import ConditioningConfig, SAOConditioner
        from sa_jax.models.dit import DiT, DiTConfig
        from sa_jax.models.t5 import T5Config, T5Encoder

        t5 = T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
        text = T5TextEncoder(t5, _random(T5Encoder(t5), ids, mask, seed=0), tok, 8)
        cond = ConditioningConfig(cond_dim=16, text_dim=16, max_length=8)
        den = DiTConfig(io_channels=4, embed_dim=32, depth=2, num_heads=2, cond_token_dim=16, global_cond_dim=32,
                        timestep_features_dim=16, ff_mult=2, rotary_dim=8)
        fam = SAOFamily(den, _random(DiT(den), jnp.zeros((1, 4, 32)), z, jnp.zeros((1, 8, 16)), jnp.zeros((1, 32)),
                                     seed=1),
                        cond, _random(SAOConditioner(cond), jnp.zeros((1, 8, 16)), mask, z, z, seed=2), text)
    else:
        from sa_jax.encoders import TextEncoder
        from sa_jax.families.sa1 import SA1Family
        from sa_jax.models.bert import BertConfig, BertEncoder
        from sa_jax.models.sa1_conditioning import IntConditionerConfig, SA1Conditioner
        from sa_jax.models.unet import UNet1d
        from sa_jax.models.unet import config_from_dict as unet_config

        bert = BertConfig(vocab_size=len(tok), hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                          max_position_embeddings=16, pooler=False)
        text = TextEncoder(bert, _random(BertEncoder(bert), ids, mask, seed=0), tok, 8)
        den = unet_config({"in_channels": 4, "channels": 16, "multipliers": [1, 2, 2], "factors": [2, 2],
                           "num_blocks": [1, 1], "attentions": [0, 1, 1], "context_embedding_features": 16,
                           "context_embedding_max_length": 10, "attention_heads": 2, "attention_multiplier": 2,
                           "resnet_groups": 4})
        timing = IntConditionerConfig()
        fam = SA1Family(den, _random(UNet1d(den), jnp.zeros((1, 32, 4)), z, jnp.zeros((1, 10, 16)),
                                     jnp.ones((1, 10), bool), seed=1),
                        _random(SA1Conditioner(16, timing, timing), jnp.zeros((1, 8, 16)), mask, z, z, seed=2),
                        text, -2, (timing, timing))
    vae = config_from_dict(TINY_VAE)        # 4 latent channels, 32x, 44.1 kHz
    vae_params = _random(AudioAutoencoder(vae), jnp.zeros((1, 32, 2)), jax.random.key(0), seed=3)
    return StableAudio(fam, Autoencoder(vae, vae_params), 32 * 32, SamplingDefaults(steps=3, cfg_scale=3.0))


def make_adapter(model: StableAudio, folder, seed: int, rank: int = 2, alpha: float = 4.0, base_hash=None,
                 family=None):
    """An adapter folder for `model` on its default targets, with small random `up` (a zero `up`, as a
    fresh adapter has, would make every comparison trivially equal)."""
    params = model.family.trainable()
    targets = lora.default_targets(model.family.name)
    adapters = lora.init_adapters(params, rank, targets, jax.random.key(seed))
    r = np.random.default_rng(seed)
    adapters = {p: {"down": a["down"], "up": jnp.asarray(0.3 * r.standard_normal(a["up"].shape), jnp.float32)}
                for p, a in adapters.items()}
    meta = {"family": family or model.family.name, "rank": rank, "alpha": alpha, "targets": list(targets),
            "base_hash": base_hash or lora.content_hash(params), "base_path": "tiny", "step": 1}
    return lora_io.save_adapter(folder, adapters, meta), adapters


@pytest.fixture(scope="module", params=["sao", "sa1"])
def setup(request, tmp_path_factory):
    """(base folder, adapter A, adapter B, family) for a tiny saved model of each family."""
    root = tmp_path_factory.mktemp(f"lora-{request.param}")
    model = tiny_model(request.param)
    base = model.save(root / "base")
    a, _ = make_adapter(model, root / "adapter_a", seed=1)
    b, _ = make_adapter(model, root / "adapter_b", seed=2, rank=3, alpha=1.5)
    return base, a, b, request.param


def trainable_leaves(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(model.family.trainable())]


def test_strength_zero_is_the_base_bit_for_bit_and_strengths_add_up(setup):
    base, a, b, family = setup
    plain = StableAudio.load(base)
    zero = StableAudio.load(base, lora=[(a, 0.0), (str(b), 0)])
    assert all(x.tobytes() == y.tobytes() for x, y in zip(trainable_leaves(plain), trainable_leaves(zero)))
    ref = plain.generate_latents(PROMPTS, **SAMPLING)
    assert zero.generate_latents(PROMPTS, **SAMPLING).tobytes() == ref.tobytes()

    both = StableAudio.load(base, lora=[(a, 0.5), (b, -1.25)])   # negative strengths subtract an adapter
    want = plain.family.trainable()
    for folder, strength in ((a, 0.5), (b, -1.25)):
        tensors, meta = lora_io.load_adapter(folder)
        want = lora.apply_adapters(want, tensors, meta["alpha"] / meta["rank"] * strength)
    got, expected = trainable_leaves(both), [np.asarray(x) for x in jax.tree_util.tree_leaves(want)]
    assert all(np.array_equal(x, y) for x, y in zip(got, expected))
    changed = sum(not np.array_equal(x, y) for x, y in zip(got, trainable_leaves(plain)))
    assert changed == len(lora_io.load_adapter(a)[0])             # exactly the adapted kernels moved
    lat = both.generate_latents(PROMPTS, **SAMPLING)
    assert np.abs(lat - ref).max() > 1e-3 * np.abs(ref).max()    # and the model hears it
    one = StableAudio.load(base, lora=[a]).generate_latents(PROMPTS, **SAMPLING)   # strength 1 by default
    assert not np.allclose(one, lat) and not np.allclose(one, ref)


def test_merged_model_generates_what_the_unmerged_one_does(setup, tmp_path):
    base, a, b, family = setup
    unmerged = StableAudio.load(base, lora=[(a, 0.8), (b, 0.5)])
    merged = StableAudio.load(unmerged.save(tmp_path / "merged"))
    want = unmerged.generate(PROMPTS, **SAMPLING)
    got = merged.generate(PROMPTS, **SAMPLING)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_adapters_that_do_not_belong_are_refused_before_or_after_loading(setup, tmp_path, caplog):
    base, a, b, family = setup
    with pytest.raises(FileNotFoundError, match="LoRA adapter folder .*missing.* does not exist"):
        StableAudio.load(tmp_path / "no-base-either", lora=[tmp_path / "missing"])   # adapters are read first
    with pytest.raises(LoraError, match="is not an sa-jax LoRA adapter.*model checkpoint, not an adapter"):
        StableAudio.load(base, lora=[base])
    for bad in ([(a, float("nan"))], [(a, "1")], [(a, True)], [42], 3.0):
        with pytest.raises(LoraError):
            StableAudio.load(base, lora=bad)
    other = "sa1" if family == "sao" else "sao"
    tensors, meta = lora_io.load_adapter(a)
    lora_io.save_adapter(tmp_path / "other_family", tensors, {**meta, "family": other})
    with pytest.raises(LoraError, match=f"trained on a '{other}' model.*is a '{family}' model"):
        StableAudio.load(base, lora=[tmp_path / "other_family"])
    wrong = {"denoiser/not_here/kernel": next(iter(tensors.values()))}
    lora_io.save_adapter(tmp_path / "wrong_paths", wrong, meta)
    with pytest.raises(LoraError, match="does not fit .*not kernels of this model.*not_here"):
        StableAudio.load(base, lora=[tmp_path / "wrong_paths"])
    # trained on other weights of the same shape: applied, with a warning naming both hashes
    lora_io.save_adapter(tmp_path / "other_base", tensors, {**meta, "base_hash": "f" * 64})
    with caplog.at_level(logging.WARNING, logger="sa_jax.lora"):
        moved = StableAudio.load(base, lora=[tmp_path / "other_base"])
    assert "f" * 64 in caplog.text and meta["base_hash"] in caplog.text
    same = StableAudio.load(base, lora=[a])
    assert all(np.array_equal(x, y) for x, y in zip(trainable_leaves(moved), trainable_leaves(same)))
