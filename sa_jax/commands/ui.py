"""`sa-jax ui [--model M] [--t5 DIR] [--lora DIR[:SCALE] ...] [--host 127.0.0.1] [--port 7860]`: the web
UI (sa_jax/ui) for text to audio, variations, inpainting, continuation and long form. The model is
loaded once before the page is served; the page is local to this machine unless --host says otherwise,
and no public share link is made."""

from __future__ import annotations

import logging
import os
import socket
import sys


def check_port(host: str, port: int) -> None:
    """Before the model loads (a minute for a large one): the address can be served on."""
    if not 0 <= port < 65536:
        raise ValueError(f"--port must be from 0 to 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise ValueError(f"cannot serve on {host}:{port} ({e.strerror}); choose another --port") from None


def run(args) -> int:
    check_port(args.host, args.port)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"   # nothing leaves the machine
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the web UI needs gradio: `bash setup.sh` installs it, or pip install 'sa-jax[ui]'") \
            from None
    from sa_jax.commands.sample import lora_specs, pipeline_log
    from sa_jax.ui.app import launch
    from sa_jax.ui.studio import Studio

    loras = tuple(lora_specs(args))   # read (and checked) when the model loads
    logging.getLogger("sa_jax").propagate = False   # gradio's imports set up the root logger: one line, not two
    with pipeline_log():
        print(f"loading {args.model or 'the shipped small model'}", file=sys.stderr)
        studio = Studio(args.model, t5=args.t5, clap=args.clap, clap_tokenizer=args.clap_tokenizer, dtype=args.dtype,
                        vae_dtype=args.vae_dtype, loras=loras, allow_nonfinite_weights=args.allow_nonfinite_weights)
        try:
            app, url = launch(studio, args.host, args.port)
            print(f"sa-jax ui: serving {url} (Ctrl+C stops it)", file=sys.stderr, flush=True)
            try:
                app.block_thread()
            finally:
                app.close()
        finally:
            studio.close()
    return 0


def register(sub) -> None:
    from sa_jax.commands.sample import add_dtype_arguments, add_model_arguments

    p = sub.add_parser("ui", help="the web UI: generation, variations, inpainting, long form in a browser",
                       description="Serve a Gradio page for text to audio with a Stable Audio model (both "
                                   "families): variations of init audio, inpainting, continuation, long form, "
                                   "batches, LoRA adapters. Local to this machine by default.")
    add_model_arguments(p)
    p.add_argument("--lora", action="append", default=[], metavar="DIR[:SCALE]",
                   help="a LoRA adapter folder and its strength (default 1); repeatable; the page has a slider each")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    add_dtype_arguments(p)
    p.add_argument("--allow-nonfinite-weights", action="store_true",
                   help="load weights that hold NaN/inf values (refused by default)")
    p.set_defaults(func=run)
