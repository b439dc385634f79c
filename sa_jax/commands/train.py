"""`sa-jax train --config configs/X.yaml key=value ...`: train a diffusion model (sa_jax/training)."""

from __future__ import annotations


def run(args) -> int:
    from sa_jax.parallel import maybe_initialize_distributed

    maybe_initialize_distributed()   # before anything touches a device
    import logging

    from sa_jax.config import load
    from sa_jax.training import TrainConfig, TrainingError, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load(TrainConfig, args.config, args.overrides)
    if args.print_config:
        import sys

        import yaml

        from sa_jax.config import to_dict

        yaml.safe_dump(to_dict(cfg), sys.stdout, sort_keys=False)
        return 0
    try:
        train(cfg)
    except TrainingError as e:
        print(f"sa-jax train: {e}")
        return 3
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a diffusion model from a config (resumes automatically)")
    p.add_argument("--config", required=True, help="a TrainConfig YAML (configs/train_*.yaml)")
    p.add_argument("overrides", nargs="*",
                   help="dotted overrides, e.g. steps=1000 optim.lr=1e-4")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)
