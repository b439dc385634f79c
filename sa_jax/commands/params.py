"""`sa-jax params CONFIG`: parameter count of a model config (a YAML or a packaged config's name, e.g.
`unet_sa1`), without building weights."""

from __future__ import annotations


def _shapes(kind: str, section: dict) -> dict:
    if kind == "autoencoder":
        from sa_jax.checkpoints.autoencoder import expected_shapes
        from sa_jax.models.autoencoder import config_from_dict
    else:
        from sa_jax.checkpoints.unet import expected_shapes
        from sa_jax.models.unet import config_from_dict
    return expected_shapes(config_from_dict(section))


KINDS = ("autoencoder", "unet")


def run(args) -> int:
    from sa_jax.config import apply_overrides, load_yaml

    data = apply_overrides(load_yaml(args.config), args.overrides)
    kind = data.get("model_type")
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    if kind is None and data.get("trainer") == "vae":          # a VAE run config: its model section
        kind, data = "autoencoder", {"autoencoder": model}
    elif kind is None and model.get("family") in ("sa1", "unet") and "unet" in model:   # a U-Net run config
        kind, data = "unet", {"unet": model["unet"]}
    if kind not in KINDS or kind not in data:
        raise ValueError(f"{args.config}: model_type {kind!r} with a {kind!r} section is needed (or a VAE or "
                         f"U-Net training config); countable model types are {list(KINDS)}")
    shapes = _shapes(kind, data[kind])
    total = 0
    groups: dict[str, int] = {}
    for path, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        total += n
        group = path.split("/")[0].split("_")[0]  # encoder, decoder, downsamples, upsamples, ...
        groups[group] = groups.get(group, 0) + n
    for name, n in groups.items():
        print(f"{name:>12}: {n:>14,}")
    print(f"{'total':>12}: {total:>14,} ({total / 1e6:.1f}M)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("params", help="count the parameters of a model config")
    p.add_argument("config", help="a model YAML, or a packaged config's name (unet_sa1, vae_sao; `sa-jax configs`)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. autoencoder.latent_dim=32")
    p.set_defaults(func=run)
