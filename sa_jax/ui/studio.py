"""The model behind the page, without the page: loaded once, it runs checked `Settings` and writes
each item's float WAV and spectrogram PNG into a folder of that request's own.

Compilation: every call with the same shapes (batch size, steps, sampler; long form: the window)
reuses the compiled sampling loop, so only the first request of a shape waits for XLA. LoRA
strengths other than the loaded ones reload the model with them (`StableAudio.load(lora=...)`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from sa_jax.ui.settings import ModelInfo, Settings

log = logging.getLogger("sa_jax.ui")

KEEP_OUTPUTS_S = 3600      # a request's folder is removed this long after it was made

# progress(fraction or (done, total), description)
Progress = Callable[[float | tuple[int, int], str], None]


@dataclasses.dataclass
class Result:
    settings: Settings
    command: str
    wavs: list[Path]
    spectrograms: list[Path]
    seconds: float               # length of each item
    elapsed: float               # seconds from the request to the files written


class Studio:
    """A loaded model and what it was loaded with. `run` is not reentrant: the page's queue runs one
    request at a time (a lock guards it for other callers)."""

    def __init__(self, model: str | None = None, t5: str | None = None, clap: str | None = None,
                 clap_tokenizer: str | None = None, dtype: str = "float32", vae_dtype: str = "float32",
                 loras: tuple[tuple[str, float], ...] = (), allow_nonfinite_weights: bool = False,
                 loaded=None):
        """Load the model (`StableAudio.load`'s arguments), or take `loaded`, a StableAudio already
        loaded from `model` with those arguments."""
        self._load_kwargs = dict(t5=t5, dtype=dtype, vae_dtype=vae_dtype, clap=clap, clap_tokenizer=clap_tokenizer)
        self._path, self._allow_nonfinite = model, allow_nonfinite_weights
        self.loras = tuple((str(folder), float(scale)) for folder, scale in loras)
        self._scales = tuple(scale for _, scale in self.loras)
        self.sa = self._load(self._scales) if loaded is None else loaded
        load_args = []
        for flag, value in (("--model", model), ("--t5", t5), ("--clap", clap), ("--clap-tokenizer", clap_tokenizer)):
            if value is not None:
                load_args += [flag, str(value)]
        for flag, value in (("--dtype", dtype), ("--vae-dtype", vae_dtype)):
            if value != "float32":
                load_args += [flag, value]
        self.info = ModelInfo.of(self.sa, tuple(load_args), self.loras)
        self.root = Path(tempfile.mkdtemp(prefix="sa-jax-ui-"))   # 0700: this user's only
        self._lock = threading.Lock()

    def _load(self, scales: tuple[float, ...]):
        from sa_jax.checkpoints.table import allow_nonfinite_weights
        from sa_jax.pipeline import StableAudio

        kwargs = dict(self._load_kwargs)
        if self.loras:
            kwargs["lora"] = [(folder, scale) for (folder, _), scale in zip(self.loras, scales)]
        with allow_nonfinite_weights(self._allow_nonfinite):
            return StableAudio.load(self._path, **kwargs)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _request_folder(self) -> Path:
        """A new folder for one request's files; folders older than KEEP_OUTPUTS_S go (the page has
        copied its files into Gradio's own cache by then)."""
        now = time.time()
        for old in self.root.iterdir():
            try:
                if now - old.stat().st_mtime > KEEP_OUTPUTS_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        return folder

    def run(self, s: Settings, progress: Progress | None = None) -> Result:
        with self._lock:
            return self._run(s, progress or (lambda *_: None))

    def _run(self, s: Settings, progress: Progress) -> Result:
        from sa_jax.audio import load_audio, read_audio, write_audio
        from sa_jax.commands.sample import output_paths, write_spectrogram

        start = time.perf_counter()
        if s.lora_scales != self._scales:
            progress(0.0, "loading the LoRA adapters at the new strengths")
            self.sa, self._scales = self._load(s.lora_scales), s.lora_scales
        sa = self.sa
        prompts = [s.prompt] * s.batch_size
        sampling = s.sampling()

        def on_step(done: int, steps: int) -> None:
            progress((done, steps), "sampling steps")
            if done == steps:   # generate decodes next: a long piece of a large model takes a while
                progress(1.0, "decoding the latents")

        def on_window(index: int, windows: int, seconds_start: float) -> None:
            progress((index, windows), f"window {index + 1} of {windows} (from {seconds_start:.1f} s)")

        if s.mode in ("inpaint", "continue"):
            data, rate = read_audio(s.source_audio)
            if s.mode == "inpaint":
                audio = sa.inpaint(data, rate, prompts, start=s.inpaint_start, end=s.inpaint_end, progress=on_window,
                                   **sampling)
            else:
                audio = sa.continue_audio(data, rate, prompts, seconds=s.continue_seconds, progress=on_window,
                                          **sampling)
        elif s.mode == "long":
            audio = sa.generate_long(prompts, seconds_total=s.seconds_total, progress=on_window, **sampling)
        else:
            init = None
            if s.mode == "variation":
                init = load_audio(s.init_audio, sa.sample_rate, sa.autoencoder.io_channels)
            audio = sa.generate(prompts, seconds_start=s.seconds_start, seconds_total=s.seconds_total,
                                init_audio=init, init_noise_level=s.init_noise_level, on_step=on_step, **sampling)
        progress(0.99, "writing the files")
        folder = self._request_folder()
        if s.mode in ("inpaint", "continue"):
            stem = "inpainted" if s.mode == "inpaint" else "continued"
            wavs = [folder / (f"{stem}_{k}.wav" if s.batch_size > 1 else f"{stem}.wav") for k in range(s.batch_size)]
        else:   # the names `sa-jax sample --batch-size` gives them
            wavs = output_paths(str(folder), [(0, s.prompt, k) for k in range(s.batch_size)], s.batch_size)
        pngs = []
        for wav, item in zip(wavs, audio):
            write_audio(wav, np.asarray(item), sa.sample_rate)
            pngs.append(write_spectrogram(wav.with_suffix(".png"), item, sa.sample_rate, s.prompt))
        elapsed = time.perf_counter() - start
        log.info("%s: %d item(s) of %.2f s in %.1f s (seed %d)", s.mode, len(wavs), audio.shape[-1] / sa.sample_rate,
                 elapsed, s.seed)
        return Result(s, s.command(self.info), wavs, pngs, audio.shape[-1] / sa.sample_rate, elapsed)
