"""The GANs' generation options, declared once (see `trilemma.options`; a light module, as
`trilemma.diffusion.options`)."""

from __future__ import annotations

from trilemma.options import BATCH_SIZE, Option

TRUNCATION = Option("truncation", float, None, 0.0, 100.0, low_open=True,
                    help="draw z from a normal truncated to [-t, t]")

# One forward pass per image: a GAN batches more images than a sampler does.
GAN = (TRUNCATION, BATCH_SIZE.with_default(256))
