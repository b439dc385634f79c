"""The web UI (`sa-jax ui`, `python -m sa_jax.ui`): a Gradio page for text to audio, variations,
inpainting, continuation and long form with both model families.

    settings.py   the controls' values -> checked Settings -> the pipeline call and the command line
    studio.py     the model, loaded once; runs Settings, writes WAVs and spectrograms per request
    app.py        the Gradio page (imports gradio; the other two do not)
"""
