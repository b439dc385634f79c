"""CLAP from a LAION-CLAP checkpoint: LAION's own HTSAT (`laion_clap/clap_module/htsat.py`, the
package installed with --no-deps) and a transformers RobertaModel as its text branch, saved as a
`.pt` in LAION's layout (DDP 'module.' prefix, `state_dict` entry, front-end buffers, AudioSet
head, `*_transform` MLPs), imported with the config read off the tensor shapes; embeddings and
the contrastive loss against LAION's code."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from sa_jax.checkpoints.clap import laion_config, load_laion_clap
from sa_jax.errors import CheckpointError
from sa_jax.models.clap import ClapModel, contrastive_loss
from sa_jax.testing.sat_ref import randomize, rel_err

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
MEL, SPEC = 16, 32


def _laion_dir() -> Path:
    spec = importlib.util.find_spec("laion_clap")
    if spec is None:
        pytest.skip("laion-clap is not installed (bash setup.sh test installs it with --no-deps)")
    return Path(spec.submodule_search_locations[0]) / "clap_module"


@functools.cache
def laion_modules():
    """LAION's htsat.py and loss.py, loaded by path: the package's __init__ pulls training code,
    torchvision and h5py. torchlibrosa (the STFT front-end, which these tests bypass by feeding
    log-mels) and the two helpers htsat.py takes from utils.py get small stand-ins."""
    root = _laion_dir()
    pkg = types.ModuleType("laion_ref")
    pkg.__path__ = [str(root)]
    sys.modules["laion_ref"] = pkg
    utils = types.ModuleType("laion_ref.utils")

    def interpolate(x, ratio):      # as LAION's utils.interpolate: repeat each frame `ratio` times
        b, t, c = x.shape
        return x[:, :, None, :].repeat(1, 1, ratio, 1).reshape(b, t * ratio, c)

    utils.interpolate = interpolate
    utils.do_mixup = lambda x, lam: x
    sys.modules["laion_ref.utils"] = utils
    if importlib.util.find_spec("torchlibrosa") is None:
        class _Inert(torch.nn.Module):
            def __init__(self, *a, **k):
                super().__init__()

            def forward(self, x):
                raise RuntimeError("torchlibrosa stand-in: the tests feed log-mel features")

        tl = types.ModuleType("torchlibrosa")
        tl.stft = types.ModuleType("torchlibrosa.stft")
        tl.augmentation = types.ModuleType("torchlibrosa.augmentation")
        tl.stft.Spectrogram = tl.stft.LogmelFilterBank = tl.augmentation.SpecAugmentation = _Inert
        sys.modules.update({"torchlibrosa": tl, "torchlibrosa.stft": tl.stft,
                            "torchlibrosa.augmentation": tl.augmentation})
    loaded = {}
    for name in ("feature_fusion", "htsat", "loss"):
        spec = importlib.util.spec_from_file_location(f"laion_ref.{name}", root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        loaded[name] = module
    return loaded["htsat"], loaded["loss"]


def _mlp(i, o):
    return torch.nn.Sequential(torch.nn.Linear(i, o), torch.nn.ReLU(), torch.nn.Linear(o, o))


class LaionClap(torch.nn.Module):
    """The parts of LAION's `CLAP` module (clap_module/model.py) the embeddings use, with the
    same attribute names, so its state dict has LAION's key layout."""

    def __init__(self, fusion: bool):
        super().__init__()
        htsat, _ = laion_modules()
        audio_cfg = types.SimpleNamespace(mel_bins=MEL, window_size=64, hop_size=32, sample_rate=16000,
                                          fmin=0, fmax=8000)
        self.audio_branch = htsat.HTSAT_Swin_Transformer(
            spec_size=SPEC, patch_size=4, patch_stride=(4, 4), num_classes=5, embed_dim=8, depths=[2, 2],
            num_heads=[2, 4], window_size=4, config=audio_cfg, enable_fusion=fusion,
            fusion_type="aff_2d" if fusion else "None")
        self.text_branch = transformers.RobertaModel(transformers.RobertaConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=80, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5,   # as roberta-base
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
        self.text_projection = _mlp(32, 12)
        self.audio_projection = _mlp(16, 12)
        self.text_transform = torch.nn.Module()
        self.text_transform.sequential = torch.nn.Sequential(torch.nn.Linear(12, 12), torch.nn.ReLU(),
                                                             torch.nn.Dropout(), torch.nn.Linear(12, 12))
        self.audio_transform = torch.nn.Module()
        self.audio_transform.sequential = torch.nn.Sequential(torch.nn.Linear(12, 12), torch.nn.ReLU(),
                                                              torch.nn.Dropout(), torch.nn.Linear(12, 12))
        self.logit_scale_a = torch.nn.Parameter(torch.tensor(2.0))
        self.logit_scale_t = torch.nn.Parameter(torch.tensor(2.5))

    def text_embedding(self, ids, mask):       # CLAP.encode_text (roberta) + get_text_embedding
        pooled = self.text_branch(input_ids=ids, attention_mask=mask)["pooler_output"]
        return torch.nn.functional.normalize(self.text_projection(pooled), dim=-1)

    def audio_embedding(self, feats, longer):  # CLAP.get_audio_embedding on mel input
        branch = self.audio_branch
        if branch.enable_fusion:
            out = branch({"mel_fusion": feats, "longer": longer}, device="cpu")
        else:      # HTSAT.forward's non-fusion path after its STFT + log-mel front-end
            x = branch.bn0(feats.transpose(1, 3)).transpose(1, 3)
            out = branch.forward_features(branch.reshape_wav2img(x))
        return torch.nn.functional.normalize(self.audio_projection(out["embedding"]), dim=-1)


@functools.cache
def laion_checkpoint(fusion: bool, root: str):
    model = randomize(LaionClap(fusion), seed=11 if fusion else 10, skip=("logit_scale",))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    # what torchlibrosa's front-end stores in a real checkpoint (our features are computed outside)
    state["module.audio_branch.spectrogram_extractor.stft.conv_real.weight"] = torch.zeros(33, 1, 64)
    state["module.audio_branch.logmel_extractor.melW"] = torch.zeros(33, MEL)
    state["module.text_branch.embeddings.position_ids"] = torch.arange(80)[None]
    path = Path(root) / f"laion_{'fusion' if fusion else 'plain'}.pt"
    torch.save({"epoch": 3, "state_dict": state}, path)
    return model, path


@pytest.fixture(params=[False, True], ids=["plain", "fusion"])
def laion(request, tmp_path_factory):
    return laion_checkpoint(request.param, str(tmp_path_factory.getbasetemp()))


def test_laion_checkpoint_matches_laion_code(laion):
    model, path = laion
    fusion = model.audio_branch.enable_fusion
    config, variables = load_laion_clap(path, spec_size=SPEC, text_heads=4)
    assert config.audio.enable_fusion == fusion and config.audio.depths == (2, 2)
    assert config.audio.num_heads == (2, 4) and config.audio.window_size == 4 and config.projection_dim == 12
    assert config.text.positions == "roberta" and config.text.num_layers == 3
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 100, (2, 12))
    ids[:, 0] = 0
    mask = np.ones((2, 12), bool)
    mask[1, 8:] = False
    ids[~mask] = 1
    feats = rng.normal(size=(3, 4 if fusion else 1, 25, MEL)).astype(np.float32)
    longer = np.array([True, False, True])
    with torch.no_grad():
        ref_t = model.text_embedding(torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))).numpy()
        ref_a = model.audio_embedding(torch.from_numpy(feats), torch.from_numpy(longer)).numpy()
    run = jax.jit(lambda v, i, m, f, l: ClapModel(config).apply(v, i, m, f, l))
    text, audio, scale_a, scale_t = run(variables, ids, mask, feats, longer)
    err_t, err_a = rel_err(text, ref_t), rel_err(audio, ref_a)
    print(f"LAION-CLAP ({'fusion' if fusion else 'plain'}) .pt vs LAION's code: text embedding {err_t:.2e}, "
          f"audio embedding {err_a:.2e}")
    assert err_t < TOL and err_a < TOL
    assert float(scale_a) == pytest.approx(2.0) and float(scale_t) == pytest.approx(2.5)
    if not fusion:
        _, loss_mod = laion_modules()
        text3 = np.array(text)[[0, 1, 0]]          # three (audio, text) pairs
        ref_loss = loss_mod.ClipLoss()(torch.from_numpy(np.array(audio)), torch.from_numpy(text3),
                                       torch.tensor(float(np.exp(scale_a))))
        loss = contrastive_loss(audio, text3, scale_a)
        print(f"contrastive loss vs LAION ClipLoss: {float(loss):.6f} vs {float(ref_loss):.6f}")
        assert abs(float(loss) - float(ref_loss)) < 1e-5


def test_laion_wrong_config_is_one_error(laion):
    model, path = laion
    state = {k: v.numpy() for k, v in torch.load(path, weights_only=True)["state_dict"].items()}
    config = laion_config(state, spec_size=SPEC, text_heads=4)
    wrong = dataclasses.replace(config, audio=dataclasses.replace(config.audio, embed_dim=16,
                                                                  enable_fusion=not config.audio.enable_fusion))
    with pytest.raises(CheckpointError) as e:
        load_laion_clap(path, wrong)
    msg = str(e.value)
    assert str(path) in msg and "shape mismatches" in msg
    assert "audio_branch.patch_embed.proj.weight: file (8, 1, 4, 4)" in msg
    assert ("fusion_model" in msg)        # fusion layers unmatched (or missing), named


def test_text_tower_alone_for_the_conditioner(tmp_path_factory, tmp_path):
    # Stable Audio 1.0 reads only CLAP's text branch from the LAION file (hidden_states[-2] + mask)
    from sa_jax.checkpoints.clap import load_clap_text
    from sa_jax.models.bert import BertEncoder

    model, path = laion_checkpoint(False, str(tmp_path_factory.getbasetemp()))
    state = torch.load(path, weights_only=True)["state_dict"]
    text_only = tmp_path / "text_only.pt"     # no audio branch at all: still loads
    torch.save({"state_dict": {k: v for k, v in state.items() if "audio_branch" not in k}}, text_only)
    config, params = load_clap_text(text_only, text_heads=4)
    ids = np.array([[0, 5, 17, 42, 9, 2, 1, 1], [0, 33, 2, 1, 1, 1, 1, 1]])
    mask = ids != 1
    mask[:, 0] = True
    states, _ = jax.jit(lambda p, i, m: BertEncoder(config).apply({"params": p}, i, m))(params, ids, mask)
    with torch.no_grad():
        ref = model.text_branch(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)),
                                output_hidden_states=True).hidden_states
    err = rel_err(states[-2], ref[-2].numpy())
    print(f"LAION text branch alone, layer -2: {err:.2e}")
    assert err < TOL
