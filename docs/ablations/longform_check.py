"""#22's goal "generates past its window with generate_long without falling silent": for each MODEL, a
`generate_long` piece of SECONDS per prompt (50 steps, seed 0), cut into 1 s frames; a frame is silent when
its RMS is more than 40 dB under the piece's loudest frame (the timing measurement's threshold). Prints the
silent seconds of each piece and the longest silent run.

    python docs/ablations/longform_check.py 30 sa_jax/assets/small runs/study/unet_f244/export
"""

import sys

from sa_jax.eval.timing import frame_levels_db
from sa_jax.pipeline import StableAudio

PROMPTS = ["sine flute, C major", "plucked string, 120, loud", "square organ, D minor, sparse, quiet"]


def main(seconds: str, *models: str) -> None:
    for path in models:
        model = StableAudio.load(path)
        pieces = model.generate_long(PROMPTS, seconds_total=float(seconds), steps=50, seed=0)
        for prompt, piece in zip(PROMPTS, pieces):
            db = frame_levels_db(piece, model.sample_rate, frame_seconds=1.0)
            silent = db < db.max() - 40
            longest = max((len(run) for run in "".join("s" if x else "." for x in silent).split(".")), default=0)
            print(f"{path} | {prompt}: {int(silent.sum())} of {silent.size} s silent, longest run {longest} s")


if __name__ == "__main__":
    main(*sys.argv[1:])
