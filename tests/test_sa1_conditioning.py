"""The paper's integer timing conditioners and 79-token context, against stable-audio-tools."""

import numpy as np
import pytest
import torch

from sa_jax.checkpoints.unet import timing_from_sat as import_sat
from sa_jax.errors import CheckpointError
from sa_jax.models.sa1_conditioning import SA1Conditioner
from sa_jax.testing.reference import import_reference


def test_int_conditioners_and_context_match_reference():
    cond = import_reference("stable_audio_tools.models.conditioners")
    torch.manual_seed(0)
    start_ref = cond.IntConditioner(768, min_val=0, max_val=512)
    total_ref = cond.IntConditioner(768, min_val=0, max_val=512)
    state = {f"conditioner.conditioners.seconds_start.{k}": v.numpy() for k, v in start_ref.state_dict().items()}
    state |= {f"conditioner.conditioners.seconds_total.{k}": v.numpy() for k, v in total_ref.state_dict().items()}
    params = import_sat(state)
    starts, totals = [0, 7, 600], [95, 512, -3]  # out-of-range values clamp, as in the reference
    with torch.no_grad():
        s_emb, s_mask = start_ref(starts, device="cpu")
        t_emb, t_mask = total_ref(totals, device="cpu")
    rng = np.random.default_rng(0)
    text = rng.normal(size=(3, 77, 768)).astype(np.float32)
    text_mask = np.arange(77)[None] < np.array([[5], [77], [1]])
    context, mask = SA1Conditioner().apply({"params": params}, text, text_mask, np.array(starts), np.array(totals))
    assert context.shape == (3, 79, 768) and mask.shape == (3, 79)
    np.testing.assert_array_equal(np.asarray(context[:, :77]), text)
    np.testing.assert_array_equal(np.asarray(context[:, 77]), s_emb[:, 0].numpy())
    np.testing.assert_array_equal(np.asarray(context[:, 78]), t_emb[:, 0].numpy())
    np.testing.assert_array_equal(np.asarray(mask), np.concatenate([text_mask, s_mask.bool().numpy(),
                                                                    t_mask.bool().numpy()], axis=1))


def test_missing_or_wrong_tables_are_clear_errors():
    with pytest.raises(CheckpointError, match="seconds_start.int_embedder.weight"):
        import_sat({})
    bad = {f"conditioner.conditioners.{n}.int_embedder.weight": np.zeros((513, 512), np.float32)
           for n in ("seconds_start", "seconds_total")}
    with pytest.raises(CheckpointError, match=r"expected \(rows, 768\)"):
        import_sat(bad)
