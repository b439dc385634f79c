"""`sa-jax evaluate`'s distribution metrics (sa_jax.eval.distribution): the shipped small model generates
one clip per held-out corpus clip, scored with a CLAP (the in-domain FD on its audio embedding and the
CLAP score) against the corpus clips; the evaluate table shows them."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_clap_api import clap_folder  # noqa: E402  (a tiny random CLAP with its tokenizer)


@pytest.mark.slow     # the shipped model's generation compiles: ~1.5 min on a busy 2-core machine
def test_distribution_metrics_of_the_shipped_model(tmp_path):
    from sa_jax import Clap, StableAudio
    from sa_jax.data import synth
    from sa_jax.eval.distribution import distribution_eval
    from sa_jax.eval.report import table

    corpus = tmp_path / "heldout"
    synth.write_corpus(corpus, 3, seed=1, max_seconds=2.0)
    _, _, clap_dir = clap_folder(str(tmp_path))
    clap = Clap.load(clap_dir)
    model = StableAudio.load()
    logs = []
    out = distribution_eval(model, corpus, clap=clap, clips=3, steps=2, log=logs.append)
    assert set(out) == {"fd_clap", "clap_score"}
    assert np.isfinite(out["fd_clap"]["value"]) and -1 <= out["clap_score"]["value"] <= 1
    assert out["fd_clap"]["clips"] == 3 and any(line.startswith("fd_clap:") for line in logs)
    assert distribution_eval(model, corpus) == {}
    report = {"timing": {"median": 0.1, "p90": 0.2}, "adherence": {}, "adherence_oracle": {},
              "reconstruction": {"count": 1, "seconds": 1.0, "stft_distance": 1.0, "level_error_db": 0.0,
                                 "silence_rms_db": -90.0}, "distribution": out}
    assert "| fd_clap (3 generations vs held-out clips) |" in table(report)
