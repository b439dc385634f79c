"""Every error class sa-jax raises, in one place. Each says what was wrong and what is allowed."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override that does not fit its schema."""


class CheckpointError(ValueError):
    """A weight file that cannot be read or does not match the model it is loaded into."""


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, not finite, or of an unsupported shape."""


class BadAudio(ValueError):
    """A file the data pipeline skips. `reason` is a short code ("unreadable", "empty", "nan", ...)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MetadataError(ValueError):
    """A manifest or sidecar that cannot be used."""


class NoUsableData(RuntimeError):
    """Every file of a source was bad (or the source was empty)."""


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps in a row)."""


class LoraError(ValueError):
    """A LoRA adapter, or its settings (targets, rank, scale), that does not fit the model it is used with."""
