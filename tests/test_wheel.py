"""The wheel built from this tree works with no repository checkout: installed into a fresh virtual environment
outside the repository, run from a folder outside it, `sa-jax configs` lists the packaged configs, `sa-jax params
unet_sa1` counts the paper's U-Net (906.7M) and `sa-jax recipe small --quick` runs end to end.

No network: the wheel is built with this environment's setuptools (--no-build-isolation) from a copy of the tree's
files (tracked and untracked-not-ignored, so no stale build/ output leaks in), installed with --no-deps, and the
fresh environment sees this environment's dependencies through a .pth line naming its site-packages (a plain path
line: the editable install's own .pth there is not run, so `sa_jax` comes from the wheel alone).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _tree_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout
    return sorted({f for f in out.split("\0") if f})


def _copy_tree(dest: Path) -> None:
    for rel in _tree_files():
        src, dst = REPO / rel, dest / rel
        if not os.path.lexists(src) or src.is_dir() and not src.is_symlink():
            continue   # deleted in the working tree, or a nested repository
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder of a fresh venv with only the wheel's sa_jax, a working folder outside the repository)."""
    root = tmp_path_factory.mktemp("wheel")
    assert REPO not in root.parents
    tree, dist, venv, work = root / "tree", root / "dist", root / "venv", root / "work"
    _copy_tree(tree)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(dist), str(tree)], check=True, cwd=root)
    (wheel,) = dist.glob("sa_jax-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, cwd=root)
    # this environment's dependencies (jax, flax, ...), after the fresh site-packages on sys.path
    (Path(site) / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work.mkdir()
    where = _run(venv / "bin", work, "python", "-c", "import sa_jax; print(sa_jax.__file__)")
    assert Path(where.strip()).is_relative_to(venv), where
    return venv / "bin", work


def _run(bin_dir: Path, cwd: Path, exe: str, *args: str, timeout: float = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("JAX_PLATFORMS", "cpu")
    res = subprocess.run([str(bin_dir / exe), *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"{exe} {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_configs_listed_from_the_wheel(installed):
    bin_dir, work = installed
    out = _run(bin_dir, work, "sa-jax", "configs")
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    for name in ("unet_sa1", "vae_sa1", "vae_sao", "train_unet_small", "train_vae_small", "data/synth"):
        assert name in names, out
    folder = Path(_run(bin_dir, work, "sa-jax", "configs", "--path").strip())
    assert REPO not in folder.parents and (folder / "unet_sa1.yaml").is_file(), folder


def test_params_of_a_packaged_config_from_the_wheel(installed):
    bin_dir, work = installed
    out = _run(bin_dir, work, "sa-jax", "params", "unet_sa1")
    assert "(906.7M)" in out, out
    # a run config resolves its base: chain inside the wheel too
    out = _run(bin_dir, work, "sa-jax", "train", "--config", "train_unet_small", "--print-config")
    assert "family: sa1" in out and "in_channels: 16" in out, out


def test_recipe_small_quick_from_the_wheel(installed):
    """The whole small recipe (--quick: a few steps per stage), ~8-10 min on 2 CPU cores."""
    bin_dir, work = installed
    _run(bin_dir, work, "sa-jax", "recipe", "small", "--out", str(work / "small"), "--quick", timeout=3600)
    assert (work / "small" / "unet" / "export" / "config.yaml").is_file()
    assert (work / "small" / "report.json").is_file()
