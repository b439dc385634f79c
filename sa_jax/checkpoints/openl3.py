"""Importing OpenL3 weights: torchopenl3's `.pth.tar` state dicts and openl3's Keras `.h5` weight files
(read with h5py; TensorFlow is not needed).

Both are tables of rows (sa_jax.checkpoints.table) over the same layer names (`conv2d_1..7`,
`batch_normalization_1..8`, `audio_embedding_layer`). The spectrogram front end's fixed tensors
come along: for the `kapre014` front end the mel matrix is taken from the file (it is what those
releases compute with) and the DFT kernels are checked against ours; the `kapre037` front end (openl3
0.4.x, the default) computes librosa's Slaney filterbank itself, whatever the file holds.

Which file goes with which front end: openl3 >= 0.4's `.h5` files hold no front-end tensors and
run with kapre 0.3.7 (`kapre037`, what stable-audio-metrics computes); torchopenl3's `.pth.tar` and
the `.h5` files of openl3 <= 0.3 hold kapre 0.1.4's mel matrix and DFT kernels (`kapre014` reproduces
them). Either front end can be asked for with any file: the network layers are read the same way.
One file serves both embedding sizes (only the last pool differs), so `embedding_size` is the
caller's choice; the input representation is read from the file (its mel matrix, or none for
`linear`) and must agree with the one asked for.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sa_jax.checkpoints.io import read_state_dict
from sa_jax.checkpoints.table import Row, convert, equals, expand, layer, torch_layer
from sa_jax.errors import CheckpointError
from sa_jax.models.openl3 import CHANNELS, CONTENT_TYPES, OpenL3Config, stft_kernels, variable_shapes

NEEDS = ("FD_openl3 needs OpenL3 weights: torchopenl3's torchopenl3_<input_repr>_<content_type>_<size>.pth.tar or "
         "openl3's openl3_audio_<input_repr>_<content_type>.h5 (mel256, 'music' for music, 'env' for sound effects)")

_LAYERS = [f"conv2d_{i + 1}" for i in range(len(CHANNELS))] + ["audio_embedding_layer"]
_NORMS = [f"batch_normalization_{i + 1}" for i in range(len(CHANNELS) + 1)]


def _describe(config: OpenL3Config) -> str:
    return f"OpenL3 ({config.input_repr}, {config.content_type}, embedding {config.embedding_size})"


def torch_rows(config: OpenL3Config) -> list[Row]:
    rows = [r for name in _LAYERS for r in torch_layer(name, name, "conv")]
    rows += [r for name in _NORMS for r in torch_layer(name, name, "bn")]
    if config.n_mels:
        rows += torch_layer("speclayer.mel_basis", "mel", "tensor", params="constants")
    return rows


# Keras layers as openl3 saves them: "<layer>.<weight>" after `read_h5` takes off the ":0".
_KERAS_CONV = [("kernel", "params/{dst}/kernel", None), ("bias", "params/{dst}/bias", None)]
_KERAS_BN = [("gamma", "params/{dst}/scale", None), ("beta", "params/{dst}/bias", None),
             ("moving_mean", "batch_stats/{dst}/mean", None), ("moving_variance", "batch_stats/{dst}/var", None)]


def keras_rows(config: OpenL3Config, spectrogram_layer: str) -> list[Row]:
    rows = [r for name in _LAYERS for r in layer(name, name, _KERAS_CONV)]
    rows += [r for name in _NORMS for r in layer(name, name, _KERAS_BN)]
    if config.n_mels:
        rows.append((f"{spectrogram_layer}.freq2mel", "constants/mel", lambda w: w.T))   # (bins, mels) -> (mels, bins)
    return rows


def _torch_checks(config: OpenL3Config):
    real, imag = stft_kernels(config.n_fft)
    return [("speclayer.dft_real_kernels", equals(real[:, None, :], "STFT kernels (real)")),
            ("speclayer.dft_imag_kernels", equals(imag[:, None, :], "STFT kernels (imaginary)"))]


def _keras_checks(config: OpenL3Config, spectrogram_layer: str):
    real, imag = stft_kernels(config.n_fft)      # kapre keeps them as (n_fft, 1, 1, bins)
    return [(f"{spectrogram_layer}.dft_real_kernels", equals(real.T[:, None, None, :], "STFT kernels (real)")),
            (f"{spectrogram_layer}.dft_imag_kernels", equals(imag.T[:, None, None, :], "STFT kernels (imaginary)"))]


def read_h5(path: Path) -> dict[str, np.ndarray]:
    """Every weight of a Keras `.h5` (weights-only or whole-model file) as {"layer.weight": array}."""
    import h5py

    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    parts = name.split("/")
                    weight = re.sub(r":\d+$", "", parts[-1])        # Keras' "kernel:0" -> "kernel"
                    out[f"{parts[0]}.{weight}"] = np.asarray(obj)
            root.visititems(visit)
    except OSError as e:
        raise CheckpointError(f"{path} is not a readable HDF5 (.h5) file ({e}). {NEEDS}") from None
    return out


def _check_content_type(path: Path, config: OpenL3Config) -> None:
    named = [c for c in CONTENT_TYPES if re.search(rf"(^|[_\-.]){c}([_\-.]|$)", path.name)]
    if named and config.content_type not in named:
        raise CheckpointError(f"{path} is named for OpenL3's '{named[0]}' model, but content type "
                              f"'{config.content_type}' was asked for")


def _check_bands(path: Path, config: OpenL3Config, mel, axis: int) -> None:
    """A file's own mel matrix (when it has one) names its input representation, even where the
    front end does not use it."""
    if mel is not None and np.shape(mel)[axis] != config.n_mels:
        raise CheckpointError(f"{path} holds a mel{np.shape(mel)[axis]} front end, but input_repr "
                              f"'{config.input_repr}' was asked for")


def load_openl3(path: str | Path, config: OpenL3Config) -> dict:
    """{'params', 'batch_stats', 'constants'} of `OpenL3(config)` from a torchopenl3 `.pth.tar` (or
    `.pth`/`.pt`) or an openl3 Keras `.h5`."""
    config.validate()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"OpenL3 weight file {path} does not exist. {NEEDS}")
    _check_content_type(path, config)
    want = variable_shapes(config)
    from sa_jax.models.openl3 import mel_matrix

    own_mel = config.n_mels and config.frontend == "kapre037"     # not the file's: see the module doc
    if path.suffix.lower() in (".h5", ".hdf5"):
        state = read_h5(path)
        spectrogram = next((k.split(".")[0] for k in state if k.endswith((".dft_real_kernels", ".freq2mel"))),
                           "melspectrogram_1")
        if own_mel:
            _check_bands(path, config, state.get(f"{spectrogram}.freq2mel"), axis=1)
            state[f"{spectrogram}.freq2mel"] = mel_matrix(config).T
        elif config.n_mels and f"{spectrogram}.freq2mel" not in state:
            # A file without the front end's tensors (openl3 >= 0.4 computes the spectrogram with weight-free
            # kapre 0.3 layers, a Slaney filterbank on the magnitude: not what this model computes, see the
            # README's Metrics): torchopenl3's mel matrix stands in, with a warning.
            import logging

            logging.getLogger("sa_jax").warning("%s holds no mel matrix (an openl3 >= 0.4 file, made for the "
                                                "kapre037 front end); the kapre014 front end asked for uses "
                                                "torchopenl3's (HTK, L1-normalised)", path)
            state[f"{spectrogram}.freq2mel"] = mel_matrix(config).T
        rows, checks = keras_rows(config, spectrogram), _keras_checks(config, spectrogram)
    else:
        try:
            state = read_state_dict(path)
        except CheckpointError as e:
            raise CheckpointError(f"{e}. {NEEDS}") from None
        if own_mel and any(k.startswith("conv2d_1.") for k in state):
            _check_bands(path, config, state.get("speclayer.mel_basis"), axis=0)
            state["speclayer.mel_basis"] = mel_matrix(config)
        rows, checks = torch_rows(config), _torch_checks(config)
    if not any(k.startswith("conv2d_1.") for k in state):
        raise CheckpointError(f"{path} holds no OpenL3 network (no conv2d_1 weights; its first keys: "
                              f"{', '.join(sorted(state)[:4])}). {NEEDS}")
    if not config.n_mels and any("mel" in k for k in state):
        raise CheckpointError(f"{path} holds a mel front end, but input_repr 'linear' was asked for")
    return convert(state, expand(rows), want, _describe(config), str(path), checks=checks,
                   ignore=(r".*num_batches_tracked",))
