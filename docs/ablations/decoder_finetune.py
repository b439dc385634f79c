"""#22's study, part 6 (exploratory): can a decoder-only fine-tune against the real audio remove the decoder's
buzz (the multiples of the 43 Hz latent frame rate that dominate its reconstructions)? The encoder is frozen,
so the latents, and any U-Net trained on them, stay valid. Prints the share of the reconstructions' power on
those multiples, the error relative to the clips and the level silence decodes to, before and every 200
steps, and saves the autoencoder to OUT:

    python docs/ablations/decoder_finetune.py runs/study/vae_quiet3 runs/study/corpus_whole runs/study/vae_ft 400
"""

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from autoencoder_check import frame_rate_share  # the sibling script's measure (docs/ablations/)

from sa_jax.autoencoder import Autoencoder
from sa_jax.eval.recon import corpus_clips
from sa_jax.training.losses import STFTLossConfig, multi_resolution_stft_loss

src, corpus, out, steps = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
lr = float(sys.argv[5]) if len(sys.argv) > 5 else 1e-4
silence_weight = float(sys.argv[6]) if len(sys.argv) > 6 else 0.05
ae = Autoencoder.load(src)
R, F, B = ae.downsampling_ratio, 48, 4
clips = [a for a, _ in corpus_clips(corpus, 200)]
held = [a for a, _ in corpus_clips("runs/study/heldout", 8)]
rng = np.random.default_rng(0)
module = ae.module
params = jax.tree.map(jnp.asarray, ae.params)
stft = STFTLossConfig(perceptual_weighting=False, w_sc=0.0, w_log_mag=1.0, w_lin_mag=1.0)

def crop():
    a = clips[rng.integers(len(clips))]
    n = F * R
    if a.shape[-1] < n:
        a = np.pad(a, ((0, 0), (0, n - a.shape[-1])))
    s = rng.integers(0, a.shape[-1] - n + 1)
    return a[:, s:s + n]

def buzz(x):
    return 10 * np.log10(frame_rate_share(x, 44100, R))

def evaluate(p):
    a2 = Autoencoder(ae.config, jax.device_get(p))
    shares, errs = [], []
    for a in held:
        n = a.shape[-1]
        pad = (-n) % R
        x = np.pad(a, ((0, 0), (0, pad)))
        r = np.asarray(a2.decode(a2.encode(x[None], chunk_frames=None), chunk_frames=None))[0][..., :n]
        shares.append(buzz(r))
        errs.append(10 * np.log10(((r - a) ** 2).mean() / (a ** 2).mean()))
    zs = np.asarray(a2.decode(np.zeros((1, ae.latent_dim, 128), np.float32), chunk_frames=None))[0]
    sil = 10 * np.log10((zs ** 2).mean() + 1e-12)
    return {"buzz_share_db": float(np.median(shares)), "residual_db": float(np.median(errs)),
            "silence_dbfs": float(sil)}

def loss_fn(decoder, z, x, zero):
    # module.decode: (B, frames, D) latents times the scale -> (B, samples, channels)
    yx = module.apply({"params": {**params, "decoder": decoder}}, jnp.swapaxes(z, 1, 2) * ae.config.scale,
                      method=module.decode)
    xx = jnp.swapaxes(x, 1, 2)
    l1 = jnp.abs(yx - xx).mean() / (jnp.abs(xx).mean() + 1e-4)
    spec = multi_resolution_stft_loss(yx, xx, stft, sample_rate=44100)
    ys = module.apply({"params": {**params, "decoder": decoder}}, zero, method=module.decode)
    sil = 10 * jnp.log10((ys ** 2).mean() + 1e-10)
    return l1 + spec + silence_weight * sil, (l1, spec, sil)

tx = optax.adam(lr)
dec = params["decoder"]
opt = tx.init(dec)
@jax.jit
def step(dec, opt, z, x, zero):
    (l, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(dec, z, x, zero)
    u, opt = tx.update(g, opt, dec)
    return optax.apply_updates(dec, u), opt, l, aux

print("before", evaluate(params), flush=True)
zero = jnp.zeros((1, F, ae.latent_dim), jnp.float32)
t0 = time.time()
for i in range(1, steps + 1):
    x = np.stack([crop() for _ in range(B)]).astype(np.float32)
    z = ae.encode(x, chunk_frames=None)          # posterior means, frozen encoder
    dec, opt, l, (l1, spec, sil) = step(dec, opt, jnp.asarray(z), jnp.asarray(x), zero)
    if i % 25 == 0:
        print(f"step {i} loss {float(l):.3f} l1 {float(l1):.3f} stft {float(spec):.3f} silence {float(sil):.1f} dB "
              f"{time.time() - t0:.0f} s", flush=True)
    if i % 200 == 0 or i == steps:
        p = {**params, "decoder": dec}
        print(f"eval step {i}", evaluate(p), flush=True)
        Autoencoder(ae.config, jax.device_get(p)).save(out, overwrite=True)
