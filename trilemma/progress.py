"""One progress-bar policy for the whole package.

Bars draw only when stderr is a terminal (tqdm's ``disable=None``): piped or
logged output, and the one-line errors of the CLI, stay free of bar debris.
``TRILEMMA_PROGRESS=1`` forces bars on (a ``nohup`` training whose log you
tail), ``TRILEMMA_PROGRESS=0`` forces them off.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm.auto import tqdm

from trilemma.pixels import to_pil


def progress(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, shown when ``enabled`` and the policy above allows."""
    forced = os.environ.get("TRILEMMA_PROGRESS")
    if not enabled or forced == "0":
        disable = True
    elif forced == "1":
        disable = False
    else:
        disable = None  # tqdm: off when stderr is not a tty
    return tqdm(iterable, disable=disable, **kwargs)


# --- step listeners -------------------------------------------------------------------------------------------
# A caller that shows progress elsewhere than a terminal (the web server's live progress bar and preview) listens
# to the sampling loops' steps. Context variables, not arguments: the loops sit several calls below `generate`, in
# every family, and a listener set in one thread (the server's worker) is seen by that thread alone.
_listener: ContextVar = ContextVar("trilemma_step_listener", default=None)
_decoder: ContextVar = ContextVar("trilemma_preview_decoder", default=None)


@contextmanager
def listen(callback):
    """Within the block, every sampling step calls `callback(desc, step, total, preview)`: desc names the loop
    ("denoising", "tokens"), step counts from 1, and preview(rows=None) (None where the loop has no image) returns the
    current state of those rows of the batch (all by default) as PIL images, computed only if called. The callback may raise to stop the generation."""
    token = _listener.set(callback)
    try:
        yield
    finally:
        _listener.reset(token)


@contextmanager
def preview_decoder(decode):
    """Latent models: how report_step turns the sampler's state into pixels in [-1, 1] (their autoencoder)."""
    token = _decoder.set(decode)
    try:
        yield
    finally:
        _decoder.reset(token)


def report_step(desc: str, step: int, total: int, state=None) -> None:
    """Tell the listener, if any, that step `step` of `total` is done; `state` (B, C, H, W) is what a preview shows
    (the noisy sample x_t: pixels, or latents that the preview decoder decodes)."""
    callback = _listener.get()
    if callback is None:
        return
    preview = None
    decode = _decoder.get()
    # Only an image-shaped state has a preview: pixels, or latents with a decoder (not unCLIP's prior's embeddings).
    if state is not None and state.dim() == 4 and (decode is not None or state.shape[1] == 3):

        def preview(rows=None):
            x = state if rows is None else state[list(rows)]
            x = decode(x) if decode is not None else x
            return to_pil(x[:, :3].float().clamp(-1, 1).nan_to_num(0.0))

    callback(desc, step, total, preview)
