"""Research ablations as one command (`sa-jax ablate SPEC.yaml --out DIR`): a base (a training config, or a
model for a sampling-only study), a grid and/or named variants of key=value overrides, seeds, and the
evaluation (`sa_jax.eval.report.evaluate`); every variant x seed trained (resumable) and evaluated in its
own process, then results.jsonl, a Markdown table and plots. See README "Ablations".

    spec.py     the spec: read, checked as a whole, expanded into items in a fixed order
    run.py      DIR/spec.yaml, shards, one worker per item, the collect at the end
    worker.py   one item: train (resuming), evaluate, result.json
    collect.py  results.jsonl, results.md, plots/<metric>.png from the result.json present
"""
