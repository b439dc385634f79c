"""`sa-jax configs`: the configs packaged with sa-jax (the repository's configs/, shipped in the wheel),
each by the name `--config NAME` / `sa-jax params NAME` take and its first comment line."""

from __future__ import annotations


def run(args) -> int:
    from sa_jax.config import CONFIG_DIR, config_description, config_names

    names = config_names()
    if args.path:
        print(CONFIG_DIR.resolve())
        return 0
    if not names:
        raise FileNotFoundError(f"no packaged configs in {CONFIG_DIR}")
    width = max(len(n) for n in names)
    for name, path in names.items():
        print(f"{name:<{width}}  {config_description(path)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("configs", help="list the packaged configs (names for --config and sa-jax params)")
    p.add_argument("--path", action="store_true", help="print the folder that holds them instead")
    p.set_defaults(func=run)
