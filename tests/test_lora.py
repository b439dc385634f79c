"""LoRA core: targets, adapters applied in weight space, the content hash, the adapter folder
(sa_jax/nn/lora.py, sa_jax/checkpoints/lora.py), on tiny random trees and on the real tiny configs' names."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sa_jax.checkpoints import lora as lora_io
from sa_jax.errors import ConfigError, LoraError
from sa_jax.nn import lora

HASH = "0" * 64


def tree(dtype=jnp.float32, seed=0):
    """A small trainable-style tree: a dense kernel, a conv kernel (k, in, out), a bias, and a 1-D 'kernel'."""
    r = np.random.default_rng(seed)
    arr = lambda *s: jnp.asarray(r.standard_normal(s), dtype)  # noqa: E731
    return {"conditioner": {"proj": {"kernel": arr(5, 3), "bias": arr(3)}},
            "denoiser": {"attn": {"q": {"kernel": arr(4, 6)}, "out": {"kernel": arr(6, 4), "bias": arr(4)}},
                         "conv": {"kernel": arr(3, 4, 2)}, "features": {"kernel": arr(7)}}}


def with_up(adapters, seed=1, size=0.1):
    """Adapters whose `up` is small random values (a zero `up` would make every check pass trivially)."""
    r = np.random.default_rng(seed)
    return {p: {"down": a["down"], "up": jnp.asarray(size * r.standard_normal(a["up"].shape), jnp.float32)}
            for p, a in adapters.items()}


def leaves(t):
    return {"/".join(str(k.key) for k in p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(t)}


def test_target_paths_kernels_only_and_error_lists_available():
    p = tree()
    assert lora.target_paths(p, [r"^denoiser/"]) == ["denoiser/attn/out/kernel", "denoiser/attn/q/kernel",
                                                     "denoiser/conv/kernel"]   # not biases, not the 1-D kernel
    assert lora.target_paths(p, "proj") == ["conditioner/proj/kernel"]
    with pytest.raises(LoraError, match=r"match no kernel.*denoiser/attn/q/kernel"):
        lora.target_paths(p, [r"^nothing$"])
    with pytest.raises(LoraError, match="not a valid regex"):
        lora.target_paths(p, ["("])
    with pytest.raises(LoraError, match="non-empty list"):
        lora.target_paths(p, [])


@pytest.mark.parametrize("name,family,expected", [
    ("train_dit_tiny", "sao", {"self_attn/qkv", "self_attn/out", "cross_attn/q", "cross_attn/kv", "cross_attn/out",
                               "ff/proj_in", "ff/proj_out"}),
    ("train_unet_tiny", "sa1", {"attention/to_q", "attention/to_kv", "attention/to_out", "cross_attention/to_q",
                                "cross_attention/to_kv", "cross_attention/to_out"}),
])
def test_default_targets_on_the_real_parameter_names(name, family, expected):
    from sa_jax.config import load
    from sa_jax.training import TrainConfig
    from sa_jax.training.model import init_params

    cfg = load(TrainConfig, name)
    params = jax.eval_shape(lambda k: init_params(cfg.model, k, 32), jax.random.key(0))
    found = lora.target_paths(params, lora.default_targets(family))
    assert {"/".join(p.split("/")[-3:-1]) for p in found} == expected
    assert all(p.startswith("denoiser/") and "norm" not in p and "conv" not in p for p in found)
    blocks = cfg.model.dit.depth if family == "sao" else None
    if blocks is not None:
        assert len(found) == 7 * blocks
    if family == "sa1":   # convolutions are opt-in
        assert lora.target_paths(params, [lora.SA1_CONVOLUTIONS])
    with pytest.raises(LoraError, match="known families"):
        lora.default_targets("dit")


def test_init_adapters_shapes_and_a_fresh_adapter_is_the_base():
    p = tree()
    ad = lora.init_adapters(p, 2, [r"^denoiser/"], jax.random.key(0))
    assert {k: (v["down"].shape, v["up"].shape) for k, v in ad.items()} == {
        "denoiser/attn/q/kernel": ((4, 2), (2, 6)), "denoiser/attn/out/kernel": ((6, 2), (2, 4)),
        "denoiser/conv/kernel": ((12, 2), (2, 2))}   # conv: fan_in = k * in
    assert all(v["down"].dtype == jnp.float32 and not np.any(v["up"]) for v in ad.values())
    assert np.std(np.asarray(ad["denoiser/conv/kernel"]["down"])) > 0
    same = leaves(lora.apply_adapters(p, ad, 1.0))
    assert all(np.array_equal(same[k], v) for k, v in leaves(p).items())
    with pytest.raises(LoraError, match="rank"):
        lora.init_adapters(p, 0, [r"^denoiser/"], jax.random.key(0))


def test_apply_is_w_plus_scaled_low_rank_update_with_conv_reshape():
    p = tree()
    ad = with_up(lora.init_adapters(p, 2, [r"^denoiser/"], jax.random.key(0)))
    out = leaves(lora.apply_adapters(p, ad, 0.75))
    base = leaves(p)
    for path, a in ad.items():
        w = base[path]
        delta = (np.asarray(a["down"], np.float64) @ np.asarray(a["up"], np.float64)).reshape(w.shape)
        np.testing.assert_allclose(out[path], w + 0.75 * delta, rtol=1e-6, atol=1e-6)
        assert not np.array_equal(out[path], w)
    untouched = set(base) - set(ad)
    assert all(np.array_equal(out[k], base[k]) for k in untouched)


def test_scale_zero_is_the_base_bit_for_bit_also_traced_and_for_negative_zero():
    p = tree()
    p["denoiser"]["attn"]["q"]["kernel"] = p["denoiser"]["attn"]["q"]["kernel"].at[0, 0].set(-0.0)
    ad = with_up(lora.init_adapters(p, 3, [r"attn"], jax.random.key(1)))
    base = leaves(p)
    for out in (lora.apply_adapters(p, ad, 0.0), jax.jit(lora.apply_adapters)(p, ad, jnp.float32(0.0))):
        got = leaves(out)
        assert all(got[k].tobytes() == v.tobytes() for k, v in base.items())
    traced = leaves(jax.jit(lora.apply_adapters)(p, ad, jnp.float32(0.5)))
    eager = leaves(lora.apply_adapters(p, ad, 0.5))
    assert all(np.array_equal(traced[k], eager[k]) for k in base)


def test_dtype_kept_bfloat16_base_stays_bfloat16():
    p = tree(jnp.bfloat16)
    ad = with_up(lora.init_adapters(p, 2, [r"^denoiser/"], jax.random.key(0)))
    out = lora.apply_adapters(p, ad, 1.0)
    assert all(a.dtype == b.dtype for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(p)))
    w = np.asarray(p["denoiser"]["attn"]["q"]["kernel"], np.float32)
    a = ad["denoiser/attn/q/kernel"]
    want = (w + np.asarray(a["down"]) @ np.asarray(a["up"])).astype(jnp.bfloat16)
    assert np.array_equal(np.asarray(out["denoiser"]["attn"]["q"]["kernel"]), want)


def test_dropout_drops_rows_of_down_with_rescale_and_needs_a_key():
    p = {"m": {"kernel": jnp.zeros((400, 1), jnp.float32)}}
    ad = {"m/kernel": {"down": jnp.ones((400, 1)), "up": jnp.ones((1, 1))}}
    out = np.asarray(lora.apply_adapters(p, ad, 1.0, dropout=0.25, key=jax.random.key(3))["m"]["kernel"])[:, 0]
    kept = out[out != 0]
    np.testing.assert_allclose(kept, 1 / 0.75, rtol=1e-6)
    assert 0.15 < np.mean(out == 0) < 0.35
    again = np.asarray(lora.apply_adapters(p, ad, 1.0, dropout=0.25, key=jax.random.key(3))["m"]["kernel"])[:, 0]
    assert np.array_equal(out, again)
    with pytest.raises(LoraError, match="key"):
        lora.apply_adapters(p, ad, 1.0, dropout=0.1)
    with pytest.raises(LoraError, match=r"\[0, 1\)"):
        lora.apply_adapters(p, ad, 1.0, dropout=1.0, key=jax.random.key(0))


def test_apply_errors_bad_scale_and_adapters_that_do_not_fit():
    p = tree()
    ad = lora.init_adapters(p, 2, [r"^denoiser/"], jax.random.key(0))
    with pytest.raises(LoraError, match="finite"):
        lora.apply_adapters(p, ad, float("nan"))
    with pytest.raises(LoraError, match="not kernels of this model"):
        lora.apply_adapters(p, {"denoiser/nope/kernel": ad["denoiser/conv/kernel"]}, 1.0)
    with pytest.raises(LoraError, match="do not fit"):
        lora.apply_adapters(p, {"denoiser/attn/q/kernel": ad["denoiser/conv/kernel"]}, 1.0)


def test_content_hash_sees_values_dtype_shape_and_names():
    p = tree()
    h = lora.content_hash(p)
    assert len(h) == 64 and h == lora.content_hash(jax.tree_util.tree_map(np.asarray, tree()))
    changed = tree()
    changed["denoiser"]["conv"]["kernel"] = changed["denoiser"]["conv"]["kernel"].at[0, 0, 0].add(1e-6)
    renamed = {"conditioner": p["conditioner"], "denoiser2": p["denoiser"]}
    others = [changed, tree(jnp.bfloat16), renamed, {**p, "conditioner": {"proj": {
        "kernel": p["conditioner"]["proj"]["kernel"].reshape(3, 5), "bias": p["conditioner"]["proj"]["bias"]}}}]
    assert len({h, *map(lora.content_hash, others)}) == 5


def meta(**kw):
    return {"family": "sao", "rank": 2, "alpha": 4.0, "targets": [r"^denoiser/"], "base_hash": HASH,
            "base_path": "/models/base", "step": 10, **kw}


def test_save_load_round_trip(tmp_path):
    p = tree()
    ad = with_up(lora.init_adapters(p, 2, [r"^denoiser/"], jax.random.key(0)))
    folder = lora_io.save_adapter(tmp_path / "a", ad, meta())
    assert sorted(f.name for f in folder.iterdir()) == ["adapter.json", "adapter.safetensors"]
    back, m = lora_io.load_adapter(folder)
    assert set(back) == set(ad)
    for k in ad:
        for part in ("down", "up"):
            assert back[k][part].dtype == np.float32 and np.array_equal(back[k][part], np.asarray(ad[k][part]))
    assert {k: m[k] for k in ("format", "format_version", "family", "rank", "alpha", "targets", "base_hash",
                              "base_path", "step")} == {**meta(), "format": "sa-jax-lora", "format_version": 1}
    assert lora_io.scale(m, 0.5) == 4.0 / 2 * 0.5
    from safetensors.numpy import load_file
    assert sorted(load_file(str(folder / "adapter.safetensors"))) == sorted(
        f"{k}/{part}" for k in ad for part in ("down", "up"))


def test_save_replaces_only_an_adapter_and_never_leaves_a_partial_folder(tmp_path, monkeypatch):
    p = tree()
    ad = with_up(lora.init_adapters(p, 2, [r"^denoiser/"], jax.random.key(0)))
    lora_io.save_adapter(tmp_path / "a", ad, meta(step=1))
    lora_io.save_adapter(tmp_path / "a", ad, meta(step=2))      # an export, again: replaced
    assert lora_io.load_adapter(tmp_path / "a")[1]["step"] == 2
    with pytest.raises(FileExistsError, match="already exists"):
        lora_io.save_adapter(tmp_path / "a", ad, meta(), overwrite=False)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an sa-jax LoRA adapter"):
        lora_io.save_adapter(notes, ad, meta())
    assert (notes / "x.txt").read_text() == "mine"

    import safetensors.numpy

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        lora_io.save_adapter(tmp_path / "a", ad, meta(step=3))
    assert lora_io.load_adapter(tmp_path / "a")[1]["step"] == 2     # the old one intact
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a", "notes"]


def test_save_refuses_bad_meta_and_values(tmp_path):
    ad = with_up(lora.init_adapters(tree(), 2, [r"^denoiser/"], jax.random.key(0)))
    for bad, match in ((meta(rank=3), "rank 3"), (meta(alpha=float("nan")), "alpha"), (meta(family="dit"), "family"),
                       (meta(base_hash="abc"), "sha256"), (meta(targets="x"), "targets")):
        with pytest.raises(LoraError, match=match):
            lora_io.save_adapter(tmp_path / "a", ad, bad)
    nan = {k: {"down": v["down"], "up": v["up"] * jnp.nan} for k, v in ad.items()}
    with pytest.raises(LoraError, match="NaN"):
        lora_io.save_adapter(tmp_path / "a", nan, meta())
    assert not (tmp_path / "a").exists()


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lora_io.load_adapter(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LoraError, match="is a file"):
        lora_io.load_adapter(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LoraError, match="missing adapter.json, adapter.safetensors"):
        lora_io.load_adapter(empty)
    ad = with_up(lora.init_adapters(tree(), 2, [r"^denoiser/"], jax.random.key(0)))
    good = lora_io.save_adapter(tmp_path / "good", ad, meta())
    (good / "adapter.json").write_text("{not json")
    with pytest.raises(ConfigError, match="line 1.*not valid JSON"):
        lora_io.load_adapter(good)
    (good / "adapter.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(LoraError, match="not sa-jax LoRA adapter metadata"):
        lora_io.load_adapter(good)
    (good / "adapter.json").write_text(json.dumps({**meta(), "format": "sa-jax-lora", "format_version": 99}))
    with pytest.raises(LoraError, match="format_version 99"):
        lora_io.load_adapter(good)
    (good / "adapter.json").write_text(json.dumps({**meta(rank=5), "format": "sa-jax-lora", "format_version": 1}))
    with pytest.raises(LoraError, match="rank 5"):
        lora_io.load_adapter(good)
    (good / "adapter.json").write_text(json.dumps({**meta(), "format": "sa-jax-lora", "format_version": 1}))
    (good / "adapter.safetensors").write_bytes(b"garbage")
    from sa_jax.errors import CheckpointError
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        lora_io.load_adapter(good)
