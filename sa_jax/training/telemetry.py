"""What a training run reports: console lines, a progress bar, TensorBoard scalars and demo audio.

    tel = Telemetry(run_dir, total_steps=cfg.steps, start_step=step)
    tel.step()                                          # once per step: advances the progress bar
    tel.scalars(step, {"loss": 0.1, "lr": 1e-4}, line="step 10/100 loss 0.1000 ...")
    tel.audio(step, "demo/0", audio, 44100)             # (channels, samples) float in [-1, 1]
    tel.text(step, "config/changed", "optim.lr: 0.001 -> 0.0005")
    tel.close()

Only process 0 writes (several hosts would otherwise write the same events). TensorBoard event
files go to `run_dir/tensorboard` (read with `tensorboard --logdir run_dir`); they are written
with tensorboardX, so TensorFlow is not needed. The progress bar shows only on a terminal
(tqdm's own check), so logs and tests see the plain lines.
"""

from __future__ import annotations

import builtins
from pathlib import Path

import jax
import numpy as np


class Telemetry:
    def __init__(self, run_dir, total_steps: int, start_step: int = 0, *, print_fn=print,
                 tensorboard: bool = True, progress: bool = True):
        self.print_fn = print_fn
        self.main = jax.process_index() == 0
        self.writer = None
        self.bar = None
        if not self.main:
            return
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if progress:
            from tqdm import tqdm

            # disable=None: no bar unless stderr is a terminal
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", disable=None, dynamic_ncols=True)
            if self.bar.disable:
                self.bar = None

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def print(self, line: str) -> None:
        if not self.main:
            return
        if self.bar is not None and self.print_fn is builtins.print:
            self.bar.write(line)   # keeps the bar intact below the line
        else:
            self.print_fn(line)

    def scalars(self, step: int, values: dict, line: str | None = None) -> None:
        """TensorBoard scalars (non-finite values are skipped) and, if given, a console line."""
        if not self.main:
            return
        if self.writer is not None:
            for name, value in values.items():
                value = float(value)
                if np.isfinite(value):
                    self.writer.add_scalar(name, value, step)
        if line is not None:
            self.print(line)

    def text(self, step: int, tag: str, text: str) -> None:
        """A text summary (TensorBoard's Text tab), e.g. the settings a resumed run changed."""
        if self.main and self.writer is not None:
            self.writer.add_text(tag, text, step)

    def audio(self, step: int, tag: str, audio: np.ndarray, sample_rate: int) -> None:
        """One clip, (channels, samples) or (samples,), into TensorBoard (mono mix: TensorBoard's
        audio plugin plays one channel)."""
        if not self.main or self.writer is None:
            return
        audio = np.asarray(audio, np.float32)
        mono = audio.mean(axis=0) if audio.ndim == 2 else audio
        self.writer.add_audio(tag, np.clip(mono, -1.0, 1.0), step, sample_rate=int(sample_rate))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
