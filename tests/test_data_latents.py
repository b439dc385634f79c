"""Pre-encoded latents (with a fake average-pooling encoder) and the TFDS source."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
from training_util import TINY_VAE

from sa_jax.data import DataPipeline, encode_dataset
from sa_jax.data.latents import combine_latents
from sa_jax.errors import NoUsableData

SR = 44100


class PoolEncoder:
    """Stands in for sa_jax.Autoencoder: channel c of the latents is (c+1) x the mean of audio
    channel c % 2 over each block of `downsampling_ratio` samples."""

    sample_rate = SR
    downsampling_ratio = 512
    io_channels = 2
    latent_dim = 4

    def __init__(self):
        self.calls = 0

    def encode(self, audio):
        self.calls += 1
        b, c, n = audio.shape
        assert c == 2 and n % self.downsampling_ratio == 0
        pooled = audio.reshape(b, c, n // self.downsampling_ratio, self.downsampling_ratio).mean(-1)
        return np.stack([(k + 1) * pooled[:, k % 2] for k in range(self.latent_dim)], axis=1)


def _cfg(path, **kw):
    base = dict(kind="latents", path=str(path), window=20 * 512, batch_size=2, shard_index=0, shard_count=1,
                num_threads=1)
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    lengths = [5000, 12_345, 30_000, 44_100 + 7]
    for i, n in enumerate(lengths):
        ramp = np.linspace(0.1, 0.9, n, dtype=np.float32)
        sf.write(root / f"c{i}.wav", np.stack([ramp, -ramp * 0.5], 1), SR, subtype="FLOAT")
        (root / f"c{i}.json").write_text(json.dumps({"genre": f"g{i}", "bpm": 100 + i}))
    sf.write(root / "mono22k.flac", (0.2 * rng.standard_normal(11025)).astype(np.float32), 22050)
    (root / "broken.wav").write_bytes(b"RIFF1234WAVEjunk")
    return root, lengths


def test_encode_dataset_and_latent_pipeline(folder, tmp_path):
    root, lengths = folder
    ae = PoolEncoder()
    out = tmp_path / "lat"
    report = encode_dataset(ae, root, out)
    assert report.kept == 5 and report.counts() == {"unreadable": 1}
    info = json.loads((out / "info.json").read_text())
    assert info["latent_dim"] == 4 and info["downsampling_ratio"] == 512 and info["count"] == 5
    rows = {r["relpath"]: r for r in map(json.loads, (out / "index.jsonl").read_text().splitlines())}
    assert rows["c1.wav"]["samples"] == 12_345 and rows["c1.wav"]["frames"] == math.ceil(12_345 / 512)
    assert rows["mono22k.flac"]["samples"] == 22050
    z = np.load(out / rows["c2.wav"]["latents"])
    assert z.shape == (4, math.ceil(30_000 / 512))
    assert json.loads((out / "skipped.json").read_text())["counts"] == {"unreadable": 1}

    # Resume: nothing is re-encoded.
    calls = ae.calls
    encode_dataset(ae, root, out)
    assert ae.calls == calls

    # The latent pipeline: crops of 20 frames with timing in seconds of audio.
    pipe = DataPipeline(_cfg(out, batch_size=5, num_epochs=3, drop_remainder=False, seed=1))
    batches = list(pipe.iterator())
    assert sum(len(b["index"]) for b in batches) == 15
    for b in batches:
        assert b["latents"].shape[1:] == (4, 20) and b["padding_mask"].shape[1:] == (20,)
        for i in range(len(b["index"])):
            rel = str(b["relpath"][i])
            row = rows[rel]
            full = np.load(out / row["latents"])
            valid = math.ceil(row["samples"] / 512)
            m = int(b["padding_mask"][i].sum())
            assert m == min(20, valid)
            assert b["seconds_total"][i] == math.ceil(row["samples"] / SR)
            # Find the crop's frame offset and check seconds_start from it.
            offsets = [o for o in range(max(1, valid - 20 + 1))
                       if np.allclose(full[:, o:o + m], b["latents"][i][:, :m])]
            assert offsets, rel
            assert b["seconds_start"][i] == math.floor(offsets[0] * 512 / SR)
            assert np.all(b["latents"][i][:, m:] == 0)
            if rel.startswith("c"):  # files with a sidecar get prompts; the other has none
                assert b["prompt"][i] and ("g" in b["prompt"][i] or "10" in b["prompt"][i])
            else:
                assert b["prompt"][i] == ""
    # The 1 s file gives crops that start in second 0 or 1 at most.
    assert {int(s) for b in batches for s in b["seconds_start"]} <= {0, 1}


def test_latents_resume_and_determinism(folder, tmp_path):
    root, _ = folder
    encode_dataset(PoolEncoder(), root, tmp_path / "lat")
    pipe = DataPipeline(_cfg(tmp_path / "lat", batch_size=3))
    it = pipe.iterator()
    next(it)
    state = it.get_state()
    want = [next(it), next(it)]
    it2 = DataPipeline(_cfg(tmp_path / "lat", batch_size=3)).iterator(state)
    for a in want:
        b = next(it2)
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_combined_latents_hold_both_folders_without_copies(folder, tmp_path):
    root, _ = folder
    a, b = tmp_path / "a", tmp_path / "b"
    encode_dataset(PoolEncoder(), root, a)
    encode_dataset(PoolEncoder(), root, b)
    assert combine_latents(tmp_path / "mix", [a, b]) == 10
    assert not (tmp_path / "mix" / "latents").exists()          # the index points into a/ and b/
    pipe = DataPipeline(_cfg(tmp_path / "mix", batch_size=10, num_epochs=1, shuffle=False))
    seen = {str(r) for batch in pipe.iterator() for r in batch["relpath"]}
    assert seen == {f"{f}/{n}" for f in "ab" for n in ("c0.wav", "c1.wav", "c2.wav", "c3.wav", "mono22k.flac")}

    class Wider(PoolEncoder):
        latent_dim = 8
    encode_dataset(Wider(), root, tmp_path / "wide")
    with pytest.raises(ValueError, match="latent_dim 8 vs 4.*one autoencoder"):
        combine_latents(tmp_path / "bad_mix", [a, tmp_path / "wide"])
    with pytest.raises(FileNotFoundError, match="is not a latents folder"):
        combine_latents(tmp_path / "bad_mix", [a, root])


def test_encode_dataset_chunks_and_bad_input(folder, tmp_path):
    root, _ = folder
    whole = tmp_path / "whole"
    encode_dataset(PoolEncoder(), root, whole)
    chunked = tmp_path / "chunked"
    encode_dataset(PoolEncoder(), root, chunked, max_chunk_seconds=0.1)
    for line in (whole / "index.jsonl").read_text().splitlines():
        r = json.loads(line)
        np.testing.assert_allclose(np.load(whole / r["latents"]), np.load(chunked / r["latents"]), atol=1e-6)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_bytes(b"")
    with pytest.raises(NoUsableData):
        encode_dataset(PoolEncoder(), bad, tmp_path / "never")
    with pytest.raises(FileNotFoundError, match="latents folder"):
        DataPipeline(_cfg(tmp_path / "never"))


def test_tfds_source_matches_folder(folder, tmp_path):
    from sa_jax.data.tfds_builder import build_tfds

    root, _ = folder
    ds_dir = build_tfds(root, tmp_path / "tfds")
    assert (ds_dir / "dataset_info.json").is_file()
    assert any(p.name.endswith(".array_record-00000-of-00001") for p in ds_dir.iterdir())
    common = dict(window=SR, batch_size=1, shard_index=0, shard_count=1, num_epochs=1, random_crop=False,
                  phase_flip=False, drop_remainder=False, shuffle=False)
    t = DataPipeline(dict(common, kind="tfds", path=str(tmp_path / "tfds")))
    f = DataPipeline(dict(common, kind="folder", path=str(root)))
    assert len(t.entries) == 5 and "unreadable" in t.report.counts()
    tb = {str(b["relpath"][0]): b for b in t.iterator()}
    fb = {str(b["relpath"][0]): b for b in f.iterator()}
    assert set(tb) == set(fb) == {"c0.wav", "c1.wav", "c2.wav", "c3.wav", "mono22k.flac"}
    for k in tb:
        np.testing.assert_allclose(tb[k]["audio"], fb[k]["audio"], atol=1e-5)  # 24-bit FLAC in the records
        for key in ("padding_mask", "seconds_start", "seconds_total", "metadata"):
            np.testing.assert_array_equal(tb[k][key], fb[k][key])




@pytest.mark.slow
def test_encode_dataset_with_the_real_autoencoder(folder, tmp_path):
    """The duck-typed interface is the one sa_jax.Autoencoder has (random tiny weights)."""
    from sa_jax import Autoencoder

    root, lengths = folder
    ae = Autoencoder.from_config(TINY_VAE, seed=0)
    report = encode_dataset(ae, root, tmp_path / "lat")
    assert report.kept == 5
    rows = [json.loads(line) for line in (tmp_path / "lat" / "index.jsonl").read_text().splitlines()]
    for r in rows:
        z = np.load(tmp_path / "lat" / r["latents"])
        assert z.shape == (4, math.ceil(r["samples"] / 32)) and np.isfinite(z).all()
    pipe = DataPipeline(_cfg(tmp_path / "lat", window=32 * 64, batch_size=2))
    b = next(pipe.iterator())
    assert b["latents"].shape == (2, 4, 64)
