"""CLAP in Flax against transformers' ClapModel (small random configs, weights through sa-jax's
importer): text hidden states at layer -2, projected text embedding, audio embedding with and
without fusion, the contrastive loss; loading a ClapModel folder; importer errors."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from sa_jax.checkpoints.clap import import_hf_clap, load_hf_clap
from sa_jax.errors import CheckpointError
from sa_jax.models.clap import ClapConfig, ClapModel, bicubic_matrix, contrastive_loss
from sa_jax.testing.sat_ref import randomize, rel_err, state_dict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4


def hf_config(fusion: bool, vocab: int = 100):
    # spec 32 with 16 mel bins: freq_ratio 2, patch grid 8; window 4 -> stage 0 shifts windows,
    # stage 1 (4 x 4) is exactly one window (no shift), as the last stage of HTSAT-tiny
    return transformers.ClapConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=80, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0),
        audio_config=dict(window_size=4, num_mel_bins=16, spec_size=32, patch_embeds_hidden_size=8, depths=[2, 2],
                          num_attention_heads=[2, 4], hidden_size=16, enable_fusion=fusion,
                          fusion_type="aff_2d" if fusion else None),
        projection_dim=12)


def random_clap(fusion: bool, seed: int = 0, vocab: int = 100):
    model = randomize(transformers.ClapModel(hf_config(fusion, vocab)), seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():        # BatchNorm statistics away from (0, 1), so a mix-up would show
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        model.logit_scale_a.fill_(2.0)
        model.logit_scale_t.fill_(2.5)
    return model


def ids_and_mask(batch=2, length=12, vocab=100, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (batch, length))
    ids[:, 0] = 0
    mask = np.ones((batch, length), bool)
    mask[1, 7:] = False
    ids[~mask] = 1                 # RoBERTa's pad id
    return ids, mask


@functools.cache
def converted(fusion: bool):
    """(torch model, our config, our variables), built once per test session (CPU time is scarce)."""
    model = random_clap(fusion)
    config = ClapConfig.from_hf(model.config.to_dict())
    assert config.audio.enable_fusion == fusion
    return model, config, import_hf_clap(state_dict(model), config)


@functools.cache
def jitted(config: ClapConfig, method: str):
    return jax.jit(lambda v, *a: ClapModel(config).apply(v, *a, method=getattr(ClapModel, method)))


@pytest.fixture(params=[False, True], ids=["plain", "fusion"])
def clap_pair(request):
    return converted(request.param)


def _text_both(module, ids, mask):
    return module.text_hidden_states(ids, mask), module.get_text_embedding(ids, mask)


def test_text_matches_transformers():
    model, config, variables = converted(False)     # the text tower is the same with or without fusion
    ids, mask = ids_and_mask()
    t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))
    with torch.no_grad():
        ref = model.text_model(input_ids=t_ids, attention_mask=t_mask, output_hidden_states=True)
        ref_emb = model.get_text_features(input_ids=t_ids, attention_mask=t_mask).pooler_output.numpy()
    states, emb = jax.jit(lambda v, i, m: ClapModel(config).apply(v, i, m, method=_text_both))(variables, ids, mask)
    assert len(states) == len(ref.hidden_states) == config.text.num_layers + 1
    err = rel_err(states[-2], ref.hidden_states[-2].numpy())
    err_last = rel_err(states[-1], ref.last_hidden_state.numpy())
    err_emb = rel_err(emb, ref_emb)
    print(f"CLAP text vs transformers: layer -2 {err:.2e}, last {err_last:.2e}, projected embedding {err_emb:.2e}")
    assert max(err, err_last, err_emb) < TOL


# 25 frames are resampled to 32 (bicubic); 32 frames go in as they are (slow: one more compile each)
@pytest.mark.parametrize("frames", [25, pytest.param(32, marks=pytest.mark.slow)])
def test_audio_matches_transformers(clap_pair, frames):
    model, config, variables = clap_pair
    fusion = config.audio.enable_fusion
    rng = np.random.default_rng(frames)
    feats = rng.normal(size=(3, 4 if fusion else 1, frames, 16)).astype(np.float32)
    longer = np.array([True, False, True])
    with torch.no_grad():
        ref = model.get_audio_features(input_features=torch.from_numpy(feats),
                                       is_longer=torch.from_numpy(longer[:, None])).pooler_output.numpy()
    fn = jitted(config, "get_audio_embedding")
    ours = fn(variables, feats, longer)
    err = rel_err(ours, ref)
    print(f"CLAP audio ({'fusion' if fusion else 'plain'}, {frames} frames) vs transformers: {err:.2e}")
    assert err < TOL
    if fusion:   # the fused rows really differ from the global-only path
        plain = np.asarray(fn(variables, feats, np.zeros(3, bool)))
        assert np.abs(plain[1] - np.asarray(ours)[1]).max() == 0
        assert np.abs(plain[[0, 2]] - np.asarray(ours)[[0, 2]]).max() > 50 * TOL


def test_logits_match_transformers():
    model, config, variables = converted(False)
    ids, mask = ids_and_mask(batch=3, seed=4)
    feats = np.random.default_rng(5).normal(size=(3, 1, 32, 16)).astype(np.float32)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)),
                    input_features=torch.from_numpy(feats))
    text, audio, scale_a, scale_t = jitted(config, "__call__")(variables, ids, mask, feats)
    assert float(scale_a) == pytest.approx(2.0) and float(scale_t) == pytest.approx(2.5)
    assert rel_err(np.exp(scale_a) * audio @ text.T, ref.logits_per_audio.numpy()) < TOL
    assert rel_err(np.exp(scale_t) * text @ audio.T, ref.logits_per_text.numpy()) < TOL
    # transformers' own loss scores the text->audio direction twice; ours is LAION's symmetric
    # InfoNCE (checked against LAION's ClipLoss in test_clap_laion.py): the same on these logits
    logits = ref.logits_per_audio
    labels = torch.arange(3)
    want = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    loss = contrastive_loss(audio, text, scale_a)
    assert abs(float(loss) - float(want)) < 1e-5


@pytest.mark.slow
def test_loss_gradient_reaches_both_towers():
    # compiling the backward pass of both towers takes minutes on a busy 2-core machine
    _, config, variables = converted(False)
    ids, mask = ids_and_mask(batch=3, seed=4)
    feats = np.random.default_rng(5).normal(size=(3, 1, 32, 16)).astype(np.float32)
    g = jax.jit(jax.grad(lambda v: contrastive_loss(*ClapModel(config).apply(v, ids, mask, feats)[1::-1],
                                                    v["params"]["logit_scale_a"])))(variables)
    assert float(np.abs(g["params"]["audio_model"]["patch_embed"]["proj"]["kernel"]).max()) > 0
    assert float(np.abs(g["params"]["text_model"]["layer_0"]["attention_query"]["kernel"]).max()) > 0


def test_bicubic_matches_torch():
    x = np.random.default_rng(0).normal(size=(1, 1, 13, 3)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), (40, 3), mode="bicubic", align_corners=True).numpy()
    ours = np.einsum("oi,bcif->bcof", bicubic_matrix(13, 40), x)
    assert rel_err(ours, ref) < 1e-6


def test_folder_loads(tmp_path):
    model, _, _ = converted(True)
    model.save_pretrained(tmp_path / "clap")
    config, variables = load_hf_clap(tmp_path / "clap")
    assert config.audio.enable_fusion and config.projection_dim == 12
    ids, mask = ids_and_mask(seed=8)
    with torch.no_grad():
        ref = model.get_text_features(input_ids=torch.from_numpy(ids),
                                      attention_mask=torch.from_numpy(mask.astype(np.int64))).pooler_output.numpy()
    assert rel_err(jitted(config, "get_text_embedding")(variables, ids, mask), ref) < TOL
    # a pytorch_model.bin folder works the same
    (tmp_path / "bin").mkdir()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "clap" / "config.json").read_text())
    load_hf_clap(tmp_path / "bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json.*model.safetensors"):
        load_hf_clap(tmp_path / "empty")


def test_wrong_shapes_are_one_clear_error():
    model, config, _ = converted(False)
    state = state_dict(model)
    state["text_projection.linear1.weight"] = np.zeros((12, 31), np.float32)
    state["audio_model.audio_encoder.layers.0.blocks.1.attention.self.relative_position_bias_table"] = \
        np.zeros((25, 2), np.float32)
    del state["audio_model.audio_encoder.norm.weight"]
    state["audio_model.audio_encoder.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as e:
        import_hf_clap(state, config, source="clap/model.safetensors")
    msg = str(e.value)
    print(msg)
    assert msg.startswith("clap/model.safetensors does not fit the CLAP config")
    for part in ("text_projection.linear1.weight: file (12, 31)", "needs (32, 12)", "(25, 2)",
                 "audio_model.audio_encoder.norm.weight (for params/audio_model/norm/scale)",
                 "audio_model.audio_encoder.extra.weight"):
        assert part in msg, part
    # a fusion checkpoint into a plain config: the fusion layers have no place
    fused = state_dict(converted(True)[0])
    with pytest.raises(CheckpointError, match="fusion_model.local_att.0.weight"):
        import_hf_clap(fused, config)


@pytest.mark.slow
def test_full_size_parameter_count():
    # LAION's HTSAT-tiny + roberta-base (laion/clap-htsat-*): the same parameter count as transformers'
    # ClapModel(ClapConfig()) (153,492,890 plain; 153,507,530 with fusion), built abstractly
    from sa_jax.models.clap import HTSATConfig, variable_shapes

    for fusion, want in ((False, 153_492_890), (True, 153_507_530)):
        shapes = variable_shapes(ClapConfig(audio=HTSATConfig(enable_fusion=fusion)))
        assert sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("params/")) == want


def test_bfloat16_compute():
    # bfloat16 compute with float32 parameters stays close to float32
    _, config, variables = converted(True)
    ids, mask = ids_and_mask()
    feats = np.random.default_rng(0).normal(size=(2, 4, 25, 16)).astype(np.float32)
    longer = np.array([True, False])
    ref = jitted(config, "__call__")(variables, ids, mask, feats, longer)
    half = jax.jit(lambda v, *a: ClapModel(config, jax.numpy.bfloat16).apply(v, *a))(
        variables, ids, mask, feats, longer)
    for r, h in zip(ref[:2], half[:2]):
        assert h.dtype == np.float32 and rel_err(h, r) < 5e-2


def test_padded_shifted_windows_match_transformers():
    # a 12 x 12 patch grid with 8 x 8 windows: padded to 16 x 16 after the norm, shifted by 4,
    # masked across the cyclic-shift seams and cropped back (HTSAT variants whose grid is not a
    # multiple of the window take this path)
    hf = transformers.ClapConfig(
        text_config=dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=20),
        audio_config=dict(window_size=8, num_mel_bins=16, spec_size=48, patch_embeds_hidden_size=8, depths=[2],
                          num_attention_heads=[2], hidden_size=8),
        projection_dim=12)
    model = randomize(transformers.ClapModel(hf), seed=6)
    config = ClapConfig.from_hf(hf.to_dict())
    variables = import_hf_clap(state_dict(model), config)
    feats = np.random.default_rng(0).normal(size=(2, 1, 100, 16)).astype(np.float32)
    with torch.no_grad():
        ref = model.get_audio_features(input_features=torch.from_numpy(feats)).pooler_output.numpy()
    err = rel_err(jitted(config, "get_audio_embedding")(variables, feats), ref)
    print(f"CLAP audio, padded 12x12 grid with shifted 8x8 windows, vs transformers: {err:.2e}")
    assert err < TOL


@pytest.mark.slow
def test_training_mode():
    # BatchNorm statistics update, dropout and stochastic depth act only with train=True (slow: two
    # more compiles of the whole model)
    import dataclasses

    _, plain_config, variables = converted(True)
    config = dataclasses.replace(plain_config, text=dataclasses.replace(plain_config.text, dropout=0.1),
                                 audio=dataclasses.replace(plain_config.audio, drop_path_rate=0.2))
    ids, mask = ids_and_mask()
    feats = np.random.default_rng(1).normal(size=(2, 4, 25, 16)).astype(np.float32)
    longer = np.array([True, False])

    @functools.partial(jax.jit, static_argnums=2)
    def run(v, key, train):
        return ClapModel(config).apply(v, ids, mask, feats, longer, train, rngs={"dropout": key},
                                       mutable=["batch_stats"])

    (t0, a0, _, _), _ = run(variables, jax.random.key(0), False)
    (t1, a1, _, _), stats = run(variables, jax.random.key(0), True)
    (t2, _, _, _), _ = run(variables, jax.random.key(1), True)
    ref = jitted(plain_config, "__call__")(variables, ids, mask, feats, longer)   # compiled by the bfloat16 test
    assert rel_err(t0, ref[0]) < 1e-6 and rel_err(a0, ref[1]) < 1e-6      # eval: deterministic
    assert np.abs(np.asarray(t1) - np.asarray(t2)).max() > 1e-3             # dropout draws differ
    moved = stats["batch_stats"]["audio_model"]["bn0"]["mean"] - variables["batch_stats"]["audio_model"]["bn0"]["mean"]
    assert np.abs(np.asarray(moved)).max() > 0
