"""The autoregressive models' generation options, declared once (see `trilemma.options`; a light module, as
`trilemma.diffusion.options`)."""

from __future__ import annotations

from trilemma.options import BATCH_SIZE, GUIDANCE_SCALE, Option

TEMPERATURE = Option("temperature", float, None, 0.0, 100.0, low_open=True, help="sampling temperature")
TOP_K = Option("top_k", int, None, 1, 1_000_000, help="keep the k likeliest tokens")
TOP_P = Option("top_p", float, None, 0.0, 1.0, low_open=True, help="nucleus sampling mass")

DALLE = (GUIDANCE_SCALE, TEMPERATURE, TOP_K, TOP_P, BATCH_SIZE)
