"""The Gradio page: controls -> `settings.resolve` -> `Studio.run` -> players, spectrograms, the
settings as a command line. Labels are a contract (the browser tests and outside checks find the
controls by them): "Prompt", "Negative prompt", "Seconds start", "Seconds total", "Steps",
"CFG scale", "Seed", "Sampler", "Sigma min", "Sigma max", "Rho" (under "Advanced"), "Batch size",
"Init audio", "Init noise level", "Source audio", "Inpaint start", "Inpaint end", "Continue by (s)",
"LoRA strength: NAME", the button "Generate"; outputs "Output" (the first item; "Output 2", ... the
others), "Spectrogram", "Seed used", "Settings", "Status", and per item "Send to init" / "Send to inpaint".

A request whose settings are wrong, or that fails, shows "Error: ..." in "Status" and leaves the
last outputs as they were; the server goes on serving. Requests queue and run one at a time (one
model, one set of compiled programs); each browser session sees only its own outputs.
"""

from __future__ import annotations

import contextvars
import logging
from pathlib import Path

import gradio as gr

from sa_jax.errors import ConfigError
from sa_jax.ui.settings import MAX_BATCH, MAX_STEPS, Request, resolve
from sa_jax.ui.studio import Studio

log = logging.getLogger("sa_jax.ui")

# Problems with the request or its inputs: shown as they are. Anything else is a bug: logged with its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, FloatingPointError)

CSS = "#status p { margin: 0; } footer { display: none !important; }"


def theme():
    """Gradio's default look with local fonts: the page loads nothing from outside the machine."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def _send(path):
    """An output's file into an input audio control, its section opened."""
    return path, gr.Accordion(open=True)


def build_app(studio: Studio) -> gr.Blocks:
    info = studio.info
    window = info.window_seconds
    long_note = (f"up to {info.max_seconds:g} s; past the {window:.2f} s window: long form (overlapping windows)"
                 if info.max_seconds > window + 1e-9 else f"up to the model's window, {window:.2f} s")
    with gr.Blocks(title="sa-jax", delete_cache=(1800, 3600)) as app:
        gr.Markdown(f"## sa-jax: text to audio\n{info.family} model, {window:.2f} s window. Every option is a flag "
                    "of `sa-jax sample` (see Settings after a run).")
        fields: dict[str, gr.components.Component] = {}
        with gr.Row():
            with gr.Column(scale=1):
                fields["prompt"] = gr.Textbox(label="Prompt", lines=2, placeholder="128 BPM tech house drum loop")
                fields["negative_prompt"] = gr.Textbox(label="Negative prompt", placeholder="(optional)")
                with gr.Row():
                    fields["seconds_start"] = gr.Number(label="Seconds start", value=0, info="timing conditioning")
                    fields["seconds_total"] = gr.Number(label="Seconds total", value=round(min(window, 10.0), 2),
                                                        info=long_note)
                with gr.Row():
                    fields["steps"] = gr.Number(label="Steps", value=info.steps, precision=0,
                                                info=f"1 to {MAX_STEPS}")
                    fields["cfg_scale"] = gr.Number(label="CFG scale", value=info.cfg_scale)
                with gr.Row():
                    fields["seed"] = gr.Number(label="Seed", value=-1, precision=0, info="-1: a random seed")
                    fields["batch_size"] = gr.Slider(label="Batch size", minimum=1, maximum=MAX_BATCH, step=1,
                                                     value=1, info="items sampled together in one call")
                fields["sampler"] = gr.Dropdown(label="Sampler", choices=list(info.samplers), value=info.sampler)
                with gr.Accordion("Advanced", open=False):
                    with gr.Row():
                        fields["sigma_min"] = gr.Number(label="Sigma min", value=info.sigma_min)
                        fields["sigma_max"] = gr.Number(label="Sigma max", value=info.sigma_max)
                        fields["rho"] = gr.Number(label="Rho", value=info.rho)
                with gr.Accordion("Init audio (variations)", open=False) as init_box:
                    fields["init_audio"] = gr.Audio(label="Init audio", type="filepath", sources=["upload"],
                                                      elem_id="init-audio")
                    fields["init_noise_level"] = gr.Number(
                        label="Init noise level", value=1.0,
                        info="the noise sampling starts from: low keeps the init audio, high departs from it")
                with gr.Accordion("Inpainting and continuation", open=False) as source_box:
                    fields["source_audio"] = gr.Audio(label="Source audio", type="filepath", sources=["upload"],
                                                        elem_id="source-audio")
                    with gr.Row():
                        fields["inpaint_start"] = gr.Number(label="Inpaint start", info="seconds")
                        fields["inpaint_end"] = gr.Number(label="Inpaint end", info="seconds (exclusive)")
                        fields["continue_seconds"] = gr.Number(label="Continue by (s)", value=0,
                                                               info="more than 0: extend instead of inpainting")
                loras = []
                if info.loras:
                    with gr.Accordion("LoRA adapters", open=True):
                        for folder, scale in info.loras:
                            loras.append(gr.Slider(label=f"LoRA strength: {Path(folder).name}", minimum=-1.0,
                                                   maximum=2.0, step=0.05, value=scale,
                                                   info=f"{folder}; 1: as trained, 0: off"))
                generate = gr.Button("Generate", variant="primary")
                status = gr.Markdown("", elem_id="status", label="Status")
            with gr.Column(scale=1):
                seed_used = gr.Number(label="Seed used", interactive=False, precision=0)
                settings = gr.Textbox(label="Settings", lines=3, interactive=False, buttons=["copy"],
                                      elem_id="settings", info="the command line that makes the same audio")
                items = []
                for k in range(MAX_BATCH):
                    with gr.Group(visible=k == 0) as group:
                        audio = gr.Audio(label="Output" if k == 0 else f"Output {k + 1}", type="filepath",
                                         interactive=False, buttons=["download"], elem_id=f"output-{k + 1}")
                        image = gr.Image(label="Spectrogram" if k == 0 else f"Spectrogram {k + 1}", type="filepath",
                                         interactive=False, format="png", height=220)
                        with gr.Row():
                            to_init = gr.Button("Send to init", size="sm")
                            to_source = gr.Button("Send to inpaint", size="sm")
                    for button, target, box in ((to_init, fields["init_audio"], init_box),
                                                (to_source, fields["source_audio"], source_box)):
                        button.click(_send, audio, [target, box], queue=False, show_progress="hidden")
                    items.append((group, audio, image))

        def handle(values: dict, progress=gr.Progress()):
            request = Request(**{name: values[c] for name, c in fields.items()},
                              lora_scales=tuple(values[c] for c in loras))
            # sampling reports its steps from XLA's callback thread: carry this request's context there
            context = contextvars.copy_context()

            def report(done, what):
                context.run(progress, done, desc=what)

            try:
                result = studio.run(resolve(request, info), report)
            except USER_ERRORS as e:
                return {status: f"**Error:** {e}"}
            except Exception as e:   # a bug: logged in full; the page says so and the server serves on
                log.exception("request failed")
                return {status: f"**Error:** the request failed ({type(e).__name__}: {e}); the server log has "
                                "the details"}
            s = result.settings
            out = {status: f"Done: {len(result.wavs)} item(s) of {result.seconds:.2f} s in {result.elapsed:.1f} s "
                           f"({s.mode}, seed {s.seed})",
                   seed_used: s.seed, settings: result.command}
            for k, (group, audio, image) in enumerate(items):
                has = k < len(result.wavs)
                out[group] = gr.Group(visible=has)
                out[audio] = str(result.wavs[k]) if has else None
                out[image] = str(result.spectrograms[k]) if has else None
            return out

        outputs = [status, seed_used, settings] + [c for item in items for c in item]
        generate.click(handle, set(fields.values()) | set(loras), outputs, api_name="generate",
                       show_progress_on=[audio for _, audio, _ in items])   # the bar over the players
    return app


def launch(studio: Studio, host: str = "127.0.0.1", port: int = 7860) -> tuple[gr.Blocks, str]:
    """Serve the page on host:port (no public share link) in the background; returns (app, url).
    `app.block_thread()` waits until Ctrl+C; `app.close()` stops it."""
    app = build_app(studio)
    app.queue(default_concurrency_limit=1)   # one request at a time; the rest wait in line
    try:
        _, url, _ = app.launch(server_name=host, server_port=port, share=False, ssr_mode=False, quiet=True,
                               prevent_thread_lock=True, theme=theme(), css=CSS, show_error=False)
    except OSError as e:
        raise ConfigError(f"cannot serve on {host}:{port} ({e}); choose another --port") from None
    return app, url
