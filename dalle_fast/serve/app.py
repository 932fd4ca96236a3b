"""The gradio page of ``python -m dalle_fast.serve`` (:func:`build_app`, :func:`launch`): a form
with the settings of ``python -m dalle_fast.generate`` (each labelled with its flag), a Generate
button (also the API endpoint ``/generate``), a gallery of the kept images best first with their
CLIP scores, a progress bar of the tokens sampled, a line saying what was done and the command
that gives the same images, and the grid PNG to download. Requests wait in a queue and run one at
a time; a value the page cannot use, or a run that cannot be opened any more, shows a message
(``gr.Error``) and leaves the server running.
"""
from __future__ import annotations

import math
import traceback

import gradio as gr
import numpy as np
import torch
from PIL import Image

from ..errors import UsageError
from ..sampling import default_temperature, default_top_k
from .studio import Generated, Studio

QUEUE_SIZE = 32  # requests waiting at most; more are refused with a message until the queue drains
EXAMPLE = "a small red circle in the top left"
# Small generated images scaled up with hard pixel edges.
CSS = "#gallery img { image-rendering: pixelated; }"
# System fonts only: the page loads nothing from outside the server.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def caption(rank: int, score: float) -> str:
    """The caption of the ``rank``-th kept image (from 1) with CLIP score ``score`` (NaN: none)."""
    return f"#{rank}: no CLIP score" if math.isnan(score) else f"#{rank}: {score:.4f}"


def gallery_items(generated: Generated) -> list[tuple[Image.Image, str]]:
    """The kept images as RGB PIL images at their size, best first, with their captions."""
    pixels = (generated.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [(Image.fromarray(np.ascontiguousarray(image), "RGB"), caption(rank, score))
            for rank, (image, score) in enumerate(zip(pixels, generated.scores.tolist()), 1)]


def build_app(studio: Studio) -> gr.Blocks:
    """The page serving ``studio``'s run, its queue set up (one request at a time)."""
    config = studio.pipeline().config
    grid = config.grid_size

    def generate(prompt, num, keep, temperature, top_k, seed, prime, prime_rows,
                 progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio's way to ask for a progress bar
        try:
            progress(0, desc="sampling image tokens")
            generated = studio.generate(studio.form_request(prompt, num, keep, temperature, top_k, seed, prime,
                                                            prime_rows), progress=True)
        except UsageError as e:
            raise gr.Error(str(e), duration=None) from None
        except Exception as e:
            traceback.print_exc()
            raise gr.Error(f"generation failed: {type(e).__name__}: {e}", duration=None) from None
        return gallery_items(generated), str(generated.grid_png), generated.summary

    with gr.Blocks(title="dalle_fast: text to image", analytics_enabled=False) as app:
        gr.Markdown(f"# dalle_fast: text to image\nRun `{studio.run_dir}` (preset `{config.name}`): "
                    f"{config.image_size} px images of {grid}x{grid} tokens from {config.image_vocab} codes. "
                    "Each field is the flag of `python -m dalle_fast.generate` named in its label.")
        with gr.Row():
            with gr.Column(scale=2, min_width=360):
                prompt = gr.Textbox(label="Prompt (--prompt)", value=EXAMPLE, placeholder=EXAMPLE, max_lines=1,
                                    elem_id="prompt")
                with gr.Row():
                    num = gr.Number(label="Samples (--num)", value=16, precision=0, elem_id="num",
                                    info="images to sample")
                    keep = gr.Number(label="Keep (--keep)", value=4, precision=0, elem_id="keep",
                                     info="CLIP-best images shown")
                with gr.Row():
                    temperature = gr.Number(label="Temperature (--temperature)", value=default_temperature(config),
                                            step=0.1, elem_id="temperature", info="0 is greedy")
                    top_k = gr.Number(label="Top-k (--top-k)", value=default_top_k(config), precision=0,
                                      elem_id="top_k", info=f"of the {config.image_vocab} codes")
                    seed = gr.Number(label="Seed (--seed)", value=0, precision=0, elem_id="seed")
                with gr.Accordion("Priming image (optional)", open=False):
                    prime = gr.Image(label="Priming image (--prime)", type="filepath", image_mode=None,
                                     sources=["upload"], elem_id="prime")
                    prime_rows = gr.Slider(1, grid, value=max(1, grid // 2), step=1,
                                           label="Token rows to keep (--prime-rows)", elem_id="prime_rows",
                                           info=f"every sample keeps the image's top rows of {grid} and draws the rest")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="Kept images, CLIP-best first (#rank: CLIP score)", format="png",
                                     columns=4, height=420, object_fit="contain", interactive=False, elem_id="gallery")
                summary = gr.Markdown(elem_id="summary")
                grid_png = gr.File(label="Grid PNG (what python -m dalle_fast.generate writes)", interactive=False,
                                   elem_id="grid_png")
        inputs = [prompt, num, keep, temperature, top_k, seed, prime, prime_rows]
        outputs = [gallery, grid_png, summary]
        button.click(generate, inputs, outputs, api_name="generate", concurrency_id="sampling")
        prompt.submit(generate, inputs, outputs, api_visibility="private", concurrency_id="sampling")
    app.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return app


def launch(app: gr.Blocks, host: str, port: int, *, block: bool = True) -> None:
    """Serve ``app`` on ``host``:``port`` (``block``: until Ctrl-C, then close it; else return once
    it listens)."""
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, theme=THEME, css=CSS,
               footer_links=["api"], show_error=True)  # show_error: gradio's own messages (a value off a slider) too
