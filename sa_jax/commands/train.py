"""`sa-jax train --config configs/X.yaml key=value ...`: train a model from a config.

The YAML's top-level `trainer:` picks the trainer: `diffusion` (the default; sa_jax.training),
`vae` (the autoencoder with its adversarial losses; sa_jax.training.vae) or `clap` (the
contrastive text/audio encoders; sa_jax.training.clap). Every trainer resumes automatically
from its run directory.
"""

from __future__ import annotations

import importlib

# trainer name -> (module, config class, train function)
TRAINERS = {
    "diffusion": ("sa_jax.training", "TrainConfig", "train"),
    "vae": ("sa_jax.training.vae", "VAETrainConfig", "train_vae"),
    "clap": ("sa_jax.training.clap", "ClapTrainConfig", "train_clap"),
}


def trainer_of(path) -> str:
    """The `trainer:` of a config YAML or packaged config name (default `diffusion`; its `base:` chain
    may set it), checked against TRAINERS."""
    from sa_jax.config import load_yaml
    from sa_jax.errors import ConfigError

    name = load_yaml(path).get("trainer", "diffusion")
    if not isinstance(name, str) or name not in TRAINERS:
        raise ConfigError(f"{path}: trainer {name!r} is not known; valid trainers: {', '.join(TRAINERS)}")
    return name


def load_run(config, overrides=()):
    """(the run's config in its trainer's schema, the trainer's train function) for a YAML + overrides."""
    from sa_jax.config import load

    module, config_class, train_fn = TRAINERS[trainer_of(config)]
    module = importlib.import_module(module)
    return load(getattr(module, config_class), config, overrides), getattr(module, train_fn)


def train_from(config, overrides=(), **kwargs):
    """Train a YAML + overrides with its trainer; returns the `sa_jax.training.engine.RunResult`
    (keyword arguments go to the train function)."""
    cfg, train_fn = load_run(config, overrides)
    return train_fn(cfg, **kwargs)


def plan(args) -> int:
    """`--plan`: compile the step for the devices present or a TPU topology, print the plan (sa_jax.training.plan)."""
    from sa_jax.errors import ConfigError
    from sa_jax.training.plan import format_report, plan_train

    if args.slices != 1 and args.topology is None:
        raise ConfigError("--slices needs --topology (and --plan)")
    cfg, _ = load_run(args.config, args.overrides)
    print(format_report(plan_train(cfg, args.topology, args.slices)))
    return 0


def run(args) -> int:
    if args.plan:
        return plan(args)   # one process, nothing loaded: no distributed start
    if args.topology is not None or args.slices != 1:
        from sa_jax.errors import ConfigError

        raise ConfigError("--topology and --slices plan a run: add --plan")
    from sa_jax.parallel import maybe_initialize_distributed

    maybe_initialize_distributed()   # before anything touches a device
    import logging

    from sa_jax.errors import TrainingError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg, train_fn = load_run(args.config, args.overrides)
    if args.print_config:
        import sys

        import yaml

        from sa_jax.config import to_dict

        yaml.safe_dump(to_dict(cfg), sys.stdout, sort_keys=False)
        return 0
    try:
        result = train_fn(cfg)
    except TrainingError as e:
        print(f"sa-jax train: {e}")
        return 3
    if result.preempted:
        print("sa-jax train: stopped by SIGTERM before the last step; the checkpoint is saved, run the same "
              "command again to resume")
        return 143   # 128 + SIGTERM, as a process killed by it
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model from a config: diffusion, VAE or CLAP (resumes automatically)")
    p.add_argument("--config", required=True,
                   help="a training YAML, or a packaged config's name (train_unet_small; `sa-jax configs` "
                        "lists them); its `trainer:` key picks diffusion, vae or clap")
    p.add_argument("overrides", nargs="*",
                   help="dotted overrides, e.g. steps=1000 optim.lr=1.0e-4")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--plan", action="store_true",
                   help="compile the train step without loading weights or data and print per-device memory, FLOPs "
                        "per step and the mesh, ending with one JSON line (docs/launch.md)")
    p.add_argument("--topology", default=None,
                   help="with --plan: compile for this TPU slice on this machine (libtpu: `bash setup.sh tpu`), e.g. "
                        "v5e:4x4, v5p:2x4x4, v5litepod-16, v5p-64; adds the compiler's step time estimate and MFU")
    p.add_argument("--slices", type=int, default=1, help="with --topology: that many slices (multi-slice, DCN)")
    p.set_defaults(func=run)
