"""#22's study, part 3: the shipped U-Net with a decoder fine-tuned once more for silence.

The recipe's vae_quiet stage (sa_jax.training.quiet) run again from the shipped model's decoder, with the
silence term weighted 5x (0.2 -> 1.0); the encoder, so the latents and the U-Net, are unchanged. Writes the
autoencoder to OUT/vae_quiet2 and the whole model (shipped U-Net + that decoder) to OUT/small_quiet2, which
configs/ablations/small_decoder.yaml evaluates. LATENTS: the corpus encoded by the shipped autoencoder:

    sa-jax encode runs/study/corpus runs/study/latents --model sa_jax/assets/small
    python docs/ablations/quiet_decoder.py runs/study/latents runs/study     (about 17 min on 2 busy cores)
"""

import json
import sys
from pathlib import Path

from sa_jax.commands.recipe import save_autoencoder
from sa_jax.pipeline import StableAudio
from sa_jax.training.quiet import QuietConfig, train_quiet


def main(latents: str, out: str) -> None:
    out = Path(out)
    shipped = StableAudio.load("sa_jax/assets/small")
    _, ae, stats = train_quiet(shipped.autoencoder, latents, QuietConfig(steps=600, silence_weight=1.0),
                               out / "vae_quiet2_run")
    print(json.dumps(stats))    # decode(silence): loudest / last frame in dBFS, before and after
    save_autoencoder(ae, out / "vae_quiet2", "quiet.json", stats)
    StableAudio(shipped.family, ae, shipped.window_samples, shipped.defaults).save(out / "small_quiet2",
                                                                                   overwrite=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
