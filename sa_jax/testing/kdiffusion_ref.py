"""k-diffusion's samplers (and stable-audio-tools' v-ddim / rectified-flow samplers) on CPU torch,
without the packages' heavy top-level imports.

`k_diffusion/__init__.py` imports its training stack (torchvision, scikit-image, CLIP, ...), which does
not install beside CPU torch here. The files the parity tests need, `sampling.py`, `utils.py` and
`external.py`, import only torch, scipy, torchsde, torchdiffeq and tqdm (plus torchvision in `utils.py`,
used by image helpers we never call). So we build a bare `k_diffusion` package module pointing at the
installed directory and load just those three files into it; torchvision is stood in for only while
`utils.py` loads. The bare package stays in `sys.modules` so `import k_diffusion` elsewhere in the test
session (e.g. stable-audio-tools' `inference/sampling.py`) gets these working modules.

k-diffusion is installed with --no-deps from requirements-reference.txt; tests skip if it is missing.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from sa_jax.testing import missing

_PACKAGE = "k_diffusion"


def _load_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _stand_in_torchvision():
    """Empty torchvision modules for `from torchvision.transforms import functional as TF`; returns the
    names it added so they can be removed again."""
    added = []
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            added.append(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    return added


def _build():
    existing = sys.modules.get(_PACKAGE)
    if existing is not None and hasattr(getattr(existing, "sampling", None), "sample_dpmpp_2m"):
        return existing
    spec = importlib.util.find_spec(_PACKAGE) if existing is None else None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(root)]
    package.__file__ = str(root / "__init__.py")
    sys.modules[_PACKAGE] = package
    added = _stand_in_torchvision()
    try:
        package.utils = _load_file(f"{_PACKAGE}.utils", root / "utils.py")
    finally:
        for name in added:
            del sys.modules[name]
    package.sampling = _load_file(f"{_PACKAGE}.sampling", root / "sampling.py")
    package.external = _load_file(f"{_PACKAGE}.external", root / "external.py")
    return package


try:
    K = _build()
except ImportError as e:  # a dependency of the reference files is missing
    K, _IMPORT_ERROR = None, e
else:
    _IMPORT_ERROR = None


def kdiffusion():
    """The bare k_diffusion package (with .sampling, .utils, .external), or skip the test."""
    if K is None:
        why = f"cannot load it: {_IMPORT_ERROR}" if _IMPORT_ERROR else "it is not installed"
        missing(f"k-diffusion reference: {why} (bash setup.sh test installs it)")
    return K


def sat_sampling():
    """stable-audio-tools' `inference/sampling.py` (v-ddim and the rectified-flow samplers), loaded by
    path so the package's model imports do not run; or skip the test."""
    kdiffusion()
    name = "_sat_inference_sampling"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("stable_audio_tools")
    if spec is None or not spec.submodule_search_locations:
        missing("stable-audio-tools is not installed (bash setup.sh test installs it)")
    root = Path(list(spec.submodule_search_locations)[0])
    return _load_file(name, root / "inference" / "sampling.py")
