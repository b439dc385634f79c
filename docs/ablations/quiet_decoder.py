"""#22's study, parts 3 and 4: the shipped U-Net with a decoder fine-tuned once more for silence.

The recipe's vae_quiet stage (sa_jax.training.quiet) run again from the shipped model's decoder, with the
silence term weighted 5x (0.2 -> 1.0); the encoder, so the latents and the U-Net, are unchanged. Part 3 used
the waveform L1 alone on the music; part 4 adds the spectral distillation term (SPECTRAL_WEIGHT, e.g. 2.0).
Writes the autoencoder to OUT/vae_quietN and the whole model (shipped U-Net + that decoder) to OUT/small_quietN
(N = 2 without the spectral term, 3 with it), which configs/ablations/small_decoder.yaml and
small_decoder_spectral.yaml evaluate. LATENTS: the corpus encoded by the shipped autoencoder:

    sa-jax encode runs/study/corpus runs/study/latents --model sa_jax/assets/small
    python docs/ablations/quiet_decoder.py runs/study/latents runs/study          (part 3, ~17 min on 2 busy cores)
    python docs/ablations/quiet_decoder.py runs/study/latents runs/study 2.0      (part 4, ~25 min)
"""

import json
import sys
from pathlib import Path

from sa_jax.commands.recipe import save_autoencoder
from sa_jax.pipeline import StableAudio
from sa_jax.training.quiet import QuietConfig, train_quiet


def main(latents: str, out: str, spectral_weight: str = "0") -> None:
    out, weight = Path(out), float(spectral_weight)
    n = 3 if weight else 2
    shipped = StableAudio.load("sa_jax/assets/small")
    _, ae, stats = train_quiet(shipped.autoencoder, latents,
                               QuietConfig(steps=600, silence_weight=1.0, spectral_weight=weight),
                               out / f"vae_quiet{n}_run")
    print(json.dumps(stats))    # decode(silence): loudest / last frame in dBFS, before and after
    save_autoencoder(ae, out / f"vae_quiet{n}", "quiet.json", stats)
    StableAudio(shipped.family, ae, shipped.window_samples, shipped.defaults).save(out / f"small_quiet{n}",
                                                                                   overwrite=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
