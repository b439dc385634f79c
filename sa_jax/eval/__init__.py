"""Evaluation of a text-to-audio model trained on the synthetic corpus: timing accuracy (the paper's
appendix C), text adherence on the corpus' controlled attributes, and the autoencoder's
reconstruction STFT distance, with confidence intervals and ceilings (`stats`). `sa-jax evaluate MODEL
--corpus DIR` runs all three (`report.evaluate`)."""

from sa_jax.eval.adherence import InstrumentClassifier, adherence_eval, oracle, reference_classifier
from sa_jax.eval.quality import rms_db, spectral_flatness
from sa_jax.eval.recon import corpus_clips, reconstruction_distance
from sa_jax.eval.timing import generated_length, requested_lengths, timing_ceiling, timing_errors, timing_eval

__all__ = ["InstrumentClassifier", "adherence_eval", "oracle", "reference_classifier", "corpus_clips",
           "reconstruction_distance", "rms_db", "spectral_flatness", "generated_length", "requested_lengths",
           "timing_ceiling", "timing_errors", "timing_eval"]
