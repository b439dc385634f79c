"""The synthetic corpus: determinism, the command line, the folder format, and audio that follows
its metadata (pan, loudness, key, note rate, timbre) measurably."""

import json

import numpy as np
import pytest
import soundfile as sf

from sa_jax.cli import main as cli
from sa_jax.data import DataPipeline, scan_folder
from sa_jax.data.synth import INSTRUMENTS, measure, synth_clip


def test_clip_is_a_pure_function_of_seed_and_index():
    a, ma = synth_clip(3, 7, max_seconds=4)
    b, mb = synth_clip(3, 7, max_seconds=4)
    c, _ = synth_clip(4, 7, max_seconds=4)
    np.testing.assert_array_equal(a, b)
    assert ma == mb and a.shape != c.shape or not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape[0] == 2
    assert abs(a.shape[1] / 44100 - ma["duration_s"]) < 1e-3
    assert np.abs(a).max() <= 0.98 + 1e-6


def test_attributes_are_measurable():
    clips = [synth_clip(0, i, min_seconds=3, max_seconds=8) for i in range(16)]
    root_ok = 0
    for audio, m in clips:
        r = measure(audio)
        assert r["pan"] == pytest.approx(m["pan"], abs=0.02), m
        assert r["loudness_db"] == pytest.approx(m["loudness_db"], abs=0.05)
        expected_rate = m["bpm"] / 60 * m["notes_per_beat"]
        assert abs(r["onsets_per_second"] - expected_rate) / expected_rate < 0.2, (m, r)
        root_ok += r["root"] == m["root"]
    assert root_ok >= 13  # the chroma peak is the tonic in nearly every clip
    # Loudness classes are separated by >= 7 dB, pan classes by the L/R ratio.
    by_class = {}
    for _, m in clips:
        by_class.setdefault(m["loudness"], []).append(m["loudness_db"])
    assert max(by_class.get("quiet", [-99])) < min(by_class.get("medium", [0])) - 5


def test_timbre_differs_by_instrument():
    """Spectral centroid relative to the tonic orders the instruments the same way every time."""
    cents = {}
    for fam in INSTRUMENTS:
        for i in range(200):
            a, m = synth_clip(1, i, max_seconds=3)
            if m["instrument_family"] == fam:
                cents[fam] = measure(a)["centroid_hz"]
                break
    assert set(cents) == set(INSTRUMENTS)
    assert cents["sine"] < cents["saw"] and cents["sine"] < cents["square"] and cents["sine"] < cents["bell"]


def test_cli_writes_the_folder_format(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert cli(["synth", "--out", str(out), "--count", "6", "--seed", "2", "--max-seconds", "3"]) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:
        info = sf.info(out / r["path"])
        assert info.samplerate == 44100 and info.channels == 2
        assert abs(info.frames / 44100 - r["duration_s"]) < 1e-3
        for key, typ in [("instrument", str), ("key", str), ("bpm", int), ("pan", float),
                         ("loudness_db", float), ("percussion", bool), ("tags", list), ("description", str)]:
            assert isinstance(r[key], typ), key
        assert str(r["bpm"]) in r["description"] and r["key"] in r["description"]
    # Same seed, same corpus.
    assert cli(["synth", "--out", str(tmp_path / "again"), "--count", "6", "--seed", "2", "--max-seconds", "3"]) == 0
    assert (tmp_path / "again" / "metadata.jsonl").read_text() == (out / "metadata.jsonl").read_text()
    assert cli(["synth", "--out", str(tmp_path / "x"), "--count", "0"]) == 2
    # The pipeline reads it, with prompts from the typed fields.
    entries, report = scan_folder(out)
    assert report.kept == 6
    pipe = DataPipeline(dict(path=str(out), window=44100, batch_size=3, shard_index=0, shard_count=1,
                             prompt_keys=["description", "instrument", "key", "bpm"]), entries, report)
    b = next(pipe.iterator())
    assert b["audio"].shape == (3, 2, 44100)
    assert all(p for p in b["prompt"])


def test_whole_seconds_snaps_durations_and_keeps_the_rest(tmp_path):
    """`sa-jax synth --whole-seconds`: every clip lasts a whole number of seconds (so it fills its integer
    seconds_total), and its attributes are those the same seed writes without it (the description's
    wording is drawn after the notes, so it may differ)."""
    import subprocess
    import sys

    out = tmp_path / "whole"
    subprocess.run([sys.executable, "-m", "sa_jax.cli", "synth", "--out", str(out), "--count", "6", "--seed", "5",
                    "--min-seconds", "1", "--max-seconds", "3", "--whole-seconds"], check=True)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        assert row["duration_s"] in (1.0, 2.0, 3.0), row["duration_s"]
        assert sf.info(str(out / row["path"])).frames == int(row["duration_s"] * 44100)
        _, free = synth_clip(5, i, min_seconds=1, max_seconds=3)
        same = {k: v for k, v in row.items() if k not in ("path", "duration_s", "description")}
        assert same == {k: v for k, v in free.items() if k not in ("duration_s", "description")}
    with pytest.raises(ValueError, match="whole number of seconds"):
        from sa_jax.data.synth import write_corpus
        write_corpus(tmp_path / "bad", 1, min_seconds=1.2, max_seconds=1.8, whole_seconds=True)


def test_synth_clip_refuses_a_range_with_no_whole_second(tmp_path):
    """synth_clip called directly (as adherence's classifier and the metric tests do) checks its range as
    write_corpus does: with whole_seconds and no whole second in it, an error instead of a length outside it;
    `sa-jax synth` says the same in one line (exit 2) and writes nothing."""
    import subprocess
    import sys

    for low, high in ((1.2, 1.8), (0.2, 0.9)):
        with pytest.raises(ValueError, match=rf"whole_seconds needs a whole number of seconds in .*\[{low}, {high}\]"):
            synth_clip(0, 0, min_seconds=low, max_seconds=high, whole_seconds=True)
    with pytest.raises(ValueError, match="need 0 < min_seconds <= max_seconds"):
        synth_clip(0, 0, min_seconds=2.0, max_seconds=1.0)
    audio, meta = synth_clip(0, 0, min_seconds=1.2, max_seconds=2.0, whole_seconds=True)   # 2 s is in range
    assert meta["duration_s"] == 2.0 and audio.shape[-1] == 2 * 44100
    out = tmp_path / "bad"
    res = subprocess.run([sys.executable, "-m", "sa_jax.cli", "synth", "--out", str(out), "--count", "1",
                          "--min-seconds", "1.2", "--max-seconds", "1.8", "--whole-seconds"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "whole number of seconds" in res.stderr
    assert not out.exists()
