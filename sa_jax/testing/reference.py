"""Importing the PyTorch reference code (stable-audio-tools, descript-audio-codec) on CPU torch.

Both packages are installed with --no-deps (see requirements-reference.txt). Their modules import
libraries that the layers we compare against never call (torchaudio, alias-free-torch, audiotools,
k-diffusion, ...); `import_reference` puts empty stand-ins for whichever of those are missing into
sys.modules, then imports the module asked for. A stand-in raises if anything actually uses it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

from sa_jax.testing import missing

# Libraries the reference modules import at top level but the tested layers never use.
_OPTIONAL = [
    "torchaudio", "torchaudio.transforms", "torchaudio.functional",
    "alias_free_torch",
    "audiotools", "audiotools.ml", "audiotools.core",
    "k_diffusion", "k_diffusion.sampling", "k_diffusion.external",
    "x_transformers", "local_attention", "vector_quantize_pytorch",
    "encodec", "encodec.modules", "laion_clap", "transformers.models.t5",
    "pytorch_lightning", "wandb", "auraloss", "nnAudio", "torchsde", "tqdm.auto",
]


class _Stub(types.ModuleType):
    """A module whose every attribute is a placeholder class that fails when used."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        class Placeholder:
            def __init__(self, *a, **k):
                raise RuntimeError(f"{self.__module__}.{name} is a test stand-in; the reference "
                                   "code under test should not call it")

            def __init_subclass__(cls, **kwargs):
                pass

        Placeholder.__module__ = self.__name__
        Placeholder.__name__ = name
        setattr(self, name, Placeholder)
        return Placeholder


def _stub_missing():
    import sa_jax.testing.kdiffusion_ref  # noqa: F401  (puts a working bare k_diffusion in sys.modules when it can)

    for name in _OPTIONAL:
        if name in sys.modules:
            continue
        try:
            # k_diffusion's own __init__ cannot import here (torchvision); only kdiffusion_ref's works.
            if not name.startswith("k_diffusion") and importlib.util.find_spec(name) is not None:
                continue
        except (ImportError, ValueError):
            pass
        stub = sys.modules[name] = _Stub(name)
        # A spec, so that importlib.util.find_spec(name) (which libraries such as transformers call
        # to probe for optional packages) answers instead of raising; with no installed
        # distribution behind it the probes still find the package absent.
        stub.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, stub)
    audiotools_ml = sys.modules["audiotools.ml"]
    if isinstance(audiotools_ml, _Stub) and "BaseModel" not in vars(audiotools_ml):
        import torch

        # descript-audio-codec subclasses audiotools' BaseModel and appends to its INTERN and EXTERN lists.
        audiotools_ml.BaseModel = type("BaseModel", (torch.nn.Module,), {"INTERN": [], "EXTERN": []})


def import_reference(module: str):
    """Import a reference module, or skip the test if its package is not installed."""
    top = module.split(".")[0]
    if importlib.util.find_spec(top) is None:
        missing(f"{top} is not installed (bash setup.sh test installs it)")
    _stub_missing()
    return importlib.import_module(module)
