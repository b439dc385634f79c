"""Importing PaSST weights: hear21passt's `.pt` checkpoint of the `PaSST` network (as its
`get_model(arch="passt_s_swa_p16_128_ap476")` loads it; a `PasstBasicWrapper` state dict with a
`net.` prefix works too), through the table engine (sa_jax.checkpoints.table).

The distillation head (`head_dist`) only matters in training (the logits are the class-token head's)
and is skipped; so is the wrapper's `device_proxy`.
"""

from __future__ import annotations

from pathlib import Path

from sa_jax.checkpoints.io import read_state_dict
from sa_jax.checkpoints.table import Row, convert, expand, torch_layer
from sa_jax.errors import CheckpointError
from sa_jax.models.passt import PaSSTConfig, variable_shapes

NEEDS = ("KL_passt needs PaSST weights: hear21passt's passt-s-f128-p16-s10-ap.476-swa.pt (the network of "
         "get_model(arch='passt_s_swa_p16_128_ap476'))")


def passt_rows(config: PaSSTConfig) -> list[Row]:
    rows = torch_layer("patch_embed.proj", "patch_embed", "conv", params="params")
    rows += [("freq_new_pos_embed", "params/freq_pos_embed", lambda w: w[0, :, :, 0].T),    # (1, d, F, 1) -> (F, d)
             ("time_new_pos_embed", "params/time_pos_embed", lambda w: w[0, :, 0, :].T),    # (1, d, 1, T) -> (T, d)
             ("new_pos_embed", "params/token_pos_embed", lambda w: w[0]),
             ("cls_token", "params/cls_token", lambda w: w.reshape(-1)),
             ("dist_token", "params/dist_token", lambda w: w.reshape(-1))]
    block = (torch_layer("blocks.{i}.norm1", "blocks_{i}/norm1", "ln")
             + torch_layer("blocks.{i}.attn.qkv", "blocks_{i}", "qkv")
             + torch_layer("blocks.{i}.attn.proj", "blocks_{i}/proj", "dense")
             + torch_layer("blocks.{i}.norm2", "blocks_{i}/norm2", "ln")
             + torch_layer("blocks.{i}.mlp.fc1", "blocks_{i}/fc1", "dense")
             + torch_layer("blocks.{i}.mlp.fc2", "blocks_{i}/fc2", "dense"))
    rows += expand(block, i=range(config.depth))
    rows += torch_layer("norm", "norm", "ln") + torch_layer("head.0", "head_norm", "ln")
    rows += torch_layer("head.1", "head", "dense")
    return rows


def load_passt(path: str | Path, config: PaSSTConfig | None = None) -> dict:
    """{'params': ...} of `PaSST(config)` from a hear21passt `.pt`."""
    config = config or PaSSTConfig()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"PaSST weight file {path} does not exist. {NEEDS}")
    try:
        state = read_state_dict(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}. {NEEDS}") from None
    if any(k.startswith("net.") for k in state):
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    if "patch_embed.proj.weight" not in state or "time_new_pos_embed" not in state:
        raise CheckpointError(f"{path} holds no PaSST network (no patch_embed.proj / time_new_pos_embed; its first "
                              f"keys: {', '.join(sorted(state)[:4])}). {NEEDS}")
    what = (f"PaSST ({config.depth} blocks x {config.embed_dim}, {config.freq_patches} x {config.time_patches} "
            f"patches, {config.num_classes} classes)")
    return convert(state, passt_rows(config), variable_shapes(config), what, str(path),
                   ignore=(r"head_dist\..*", r"device_proxy"))
