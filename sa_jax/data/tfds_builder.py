"""A TFDS dataset (array_record files) made from an audio folder, read without TensorFlow.

    path = build_tfds("corpus/", "tfds_data/")        # -> tfds_data/audio_folder/1.0.0
    pipe = DataPipeline(DataConfig(kind="tfds", path=path, ...))

Each record holds the audio as FLAC bytes (24-bit, the file's own rate and channels; MP3/OGG are
transcoded once here so every record decodes and seeks the same way), the header facts the crop
needs (sample_rate, frames, channels), the relative path and the metadata as JSON text. Audio is a
plain bytes Tensor, not `tfds.features.Audio` (which needs TensorFlow); decoding happens in the
grain map, and `as_data_source()` gives random access for grain's MapDataset.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from sa_jax.data.sources import SkipReport
from sa_jax.errors import NoUsableData

log = logging.getLogger("sa_jax.data")

VERSION = "1.0.0"
_builder_cls = None


def _builder_class():
    """Defined lazily so importing sa_jax.data does not import tensorflow_datasets."""
    global _builder_cls
    if _builder_cls is not None:
        return _builder_cls
    import tensorflow_datasets as tfds

    class AudioFolder(tfds.core.GeneratorBasedBuilder):
        """Audio files + metadata from a folder (see sa_jax.data.tfds_builder)."""

        VERSION = tfds.core.Version(VERSION)

        # No downloads, so no checksums file; TFDS's default lookup imports `importlib_resources`.
        @tfds.core.utils.classproperty
        @classmethod
        def _checksums_path(cls):
            return None

        def __init__(self, *, source_dir=None, manifest=None, check="header", **kwargs):
            self._source_dir = source_dir
            self._manifest = manifest
            self._check = check
            self.skip_report = SkipReport()
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Audio files (FLAC bytes) with metadata, written by sa-jax.",
                features=tfds.features.FeaturesDict({
                    "audio_bytes": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "relpath": tfds.features.Text(),
                    "metadata_json": tfds.features.Text(),
                    "sample_rate": tfds.features.Scalar(dtype=np.int32),
                    "frames": tfds.features.Scalar(dtype=np.int64),
                    "channels": tfds.features.Scalar(dtype=np.int32),
                }))

        def _split_generators(self, dl_manager):
            if self._source_dir is None:
                raise ValueError("building needs source_dir (the audio folder)")
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            import soundfile as sf

            from sa_jax.data.audio_io import AudioInfo, read_window
            from sa_jax.data.sources import scan_folder

            entries, report = scan_folder(self._source_dir, self._manifest, self._check)
            self.skip_report = report
            report.kept = 0
            for e in entries:
                info = AudioInfo(e["sample_rate"], e["frames"], e["channels"])
                try:
                    audio = read_window(e["path"], info, info.sample_rate, 0, info.frames,
                                        channels=info.channels, what=e["relpath"])
                except ValueError as err:  # BadAudio: truncated, NaN, ...
                    report.skip(e["relpath"], getattr(err, "reason", "decode_error"), str(err))
                    continue
                buf = io.BytesIO()
                sf.write(buf, np.clip(audio.T, -1, 1), info.sample_rate, format="FLAC", subtype="PCM_24")
                report.kept += 1
                # A name that is not UTF-8 (surrogate escapes) is stored with \\xNN for its odd bytes.
                rel = os.fsencode(e["relpath"]).decode("utf-8", "backslashreplace")
                yield rel, {
                    "audio_bytes": buf.getvalue(), "relpath": rel,
                    "metadata_json": e["metadata_json"], "sample_rate": info.sample_rate,
                    "frames": audio.shape[1], "channels": info.channels}

    _builder_cls = AudioFolder
    return AudioFolder


def build_tfds(source_dir: str | Path, data_dir: str | Path, manifest: str | Path | None = None,
               check: str = "header") -> Path:
    """Write the TFDS dataset for `source_dir` under `data_dir`; returns the dataset folder
    (`data_dir/audio_folder/1.0.0`) to give to `DataConfig(kind="tfds", path=...)`."""
    import tensorflow_datasets as tfds

    cls = _builder_class()
    builder = cls(source_dir=str(source_dir), manifest=manifest, check=check, data_dir=str(data_dir),
                  file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    out = Path(builder.data_dir)
    with open(out / "sa_jax_skipped.json", "w") as f:
        json.dump(builder.skip_report.to_json(), f, indent=1)
    log.info("TFDS dataset at %s: %s", out, builder.skip_report.summary())
    return out


def _dataset_dir(path: Path) -> Path:
    if (path / "dataset_info.json").is_file():
        return path
    found = sorted(path.glob("*/*/dataset_info.json"))
    if not found:
        raise FileNotFoundError(f"{path} holds no TFDS dataset (no dataset_info.json); write one with build_tfds")
    return found[-1].parent


def open_tfds(path: str | Path, split: str = "train"):
    """(random-access data source, SkipReport) for a dataset written by `build_tfds`."""
    import tensorflow_datasets as tfds

    ds_dir = _dataset_dir(Path(path))
    builder = tfds.builder_from_directory(str(ds_dir))
    source = builder.as_data_source(split=split)
    report = SkipReport(len(source), len(source))
    skipped = ds_dir / "sa_jax_skipped.json"
    if skipped.is_file():
        data = json.loads(skipped.read_text())
        report = SkipReport(data["seen"], len(source), [(d["path"], d["reason"], d["detail"]) for d in data["skipped"]])
    if len(source) == 0:
        raise NoUsableData(f"TFDS dataset {ds_dir} split {split!r} is empty")
    return source, report
