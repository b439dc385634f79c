"""Click to audio in the web UI: `sa-jax ui` as a subprocess, headless chromium clicking Generate and waiting
for the player's download link, against `StableAudio.generate` with the same settings called in this process
(the reference: what the page's request costs without the page). Prints a table with the ratio.

    .venv/bin/python bench/bench_ui.py                          # the shipped small model, 4 s, 100 steps
    .venv/bin/python bench/bench_ui.py --steps 8 --repeats 5 --model sao-jax

The first click of a shape compiles the sampling loop (with the per-step progress callback) and the decoder;
it is reported apart. Page clicks and direct calls alternate, so both see the same load on a shared
machine. "warm" rows are medians over --repeats clicks with fresh seeds. The page's time includes the
browser round trip, writing the float WAV and the spectrogram PNG, and Gradio's file copy; the direct call
covers conditioning, sampling and decoding only. Needs /usr/bin/chromium and playwright (`bash setup.sh test`).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
SA_JAX = str(Path(sys.executable).with_name("sa-jax"))
PROMPT = "A warm plucked string playing a steady melody in C major at 120 BPM, loud."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, folder: Path) -> tuple[subprocess.Popen, str, float]:
    port = _free_port()
    args = [SA_JAX, "ui", "--port", str(port)] + (["--model", model] if model else [])
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(folder / "gradio"),
               SA_JAX_CACHE_DIR="off")   # a cold start, as a first run on a new machine
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            sys.exit(f"sa-jax ui exited:\n{(folder / 'server.log').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url, time.perf_counter() - start
        except OSError:
            time.sleep(0.25)


def click_to_audio(page, seconds: float, steps: int, seed: int) -> float:
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_label("Seconds total", exact=True).fill(str(seconds))
    page.get_by_label("Steps", exact=True).fill(str(steps))
    page.get_by_label("Seed", exact=True).fill(str(seed))
    status = page.locator("#status")
    before = status.inner_text()
    start = time.perf_counter()
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("([el, before]) => /^(Done|Error)/.test(el.innerText) && el.innerText !== before",
                           arg=[status.element_handle(), before], timeout=900_000)
    elapsed = time.perf_counter() - start
    text = status.inner_text()
    if not text.startswith("Done"):
        sys.exit(f"the page says: {text}")
    page.locator("#output-1 a[href$='.wav']").wait_for(state="attached")
    return elapsed


def direct(sa, seconds: float, steps: int, seed: int) -> float:
    """StableAudio.generate in this process with the page's settings (and its progress callback)."""
    start = time.perf_counter()
    sa.generate([PROMPT], seconds_total=seconds, steps=steps, seed=seed, on_step=lambda i, n: None)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped small model)")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from sa_jax import StableAudio

    sa = StableAudio.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, ready = start_server(args.model, Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
                page = browser.new_page()
                page.goto(url)
                page.get_by_role("button", name="Generate").wait_for()
                # page and reference alternate, so both see the same load on a shared machine
                first = click_to_audio(page, args.seconds, args.steps, 0)
                direct_first = direct(sa, args.seconds, args.steps, 0)
                pages, directs = [], []
                for seed in range(1, args.repeats + 1):
                    pages.append(click_to_audio(page, args.seconds, args.steps, seed))
                    directs.append(direct(sa, args.seconds, args.steps, seed))
                warm, direct_warm = statistics.median(pages), statistics.median(directs)
                browser.close()
        finally:
            proc.terminate()
            proc.wait()

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; model: "
          f"{args.model or 'shipped small'}; {args.seconds:g} s of audio, {args.steps} steps, batch 1")
    print(f"# sa-jax ui start to first page: {ready:.1f} s (imports, model load)")
    print("| request | page: click to audio (s) | StableAudio.generate (s) | ratio page / generate |")
    print("|---|---|---|---|")
    print(f"| first (compiles) | {first:.2f} | {direct_first:.2f} | {first / direct_first:.2f} |")
    print(f"| warm (median of {args.repeats}) | {warm:.2f} | {direct_warm:.2f} | {warm / direct_warm:.2f} |")


if __name__ == "__main__":
    main()
