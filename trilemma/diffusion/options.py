"""The diffusion models' generation options, declared once (see `trilemma.options`).

A light module: no torch, no model, so that the command line's `--help` and the server's request fields are built
from it without loading a model. Each model class names its tuple here in `generate_options`; `trilemma.registry`
points to the same tuple by name for the readers that must not import the model.
"""

from __future__ import annotations

from trilemma.options import BATCH_SIZE, GUIDANCE_SCALE, INF, NEGATIVE_PROMPT, STEPS, Option

# trilemma.diffusion.sampling.SAMPLERS and thresholding.MODES hold the same names (a test checks that they agree):
# they are written out here so that reading the declarations does not import torch.
# Which samplers a model takes depends on how it was trained: a noise schedule (epsilon, v) or rectified flow.
NOISE_SAMPLERS = ("ddpm", "ddim", "dpmsolver++")
FLOW_SAMPLERS = ("euler", "heun", "dpmsolver++")


def samplers_for(prediction_type: str | None) -> tuple[str, ...]:
    return FLOW_SAMPLERS if prediction_type == "flow" else NOISE_SAMPLERS


SAMPLER = Option("sampler", str, None, choices=("ddpm", "ddim", "dpmsolver++", "euler", "heun"),
                 help="diffusion sampler (ddpm, ddim: noise-schedule models; euler, heun: rectified-flow models; "
                      "dpmsolver++: both)")
ETA = Option("eta", float, 0.0, 0.0, 1.0, help="DDIM's noise level (0: deterministic DDIM, 1: DDPM-like)")
CLIP_GUIDANCE = Option("clip_guidance", float, None, 0.0, 10000.0, metavar="SCALE",
                       help="CLIP guidance (GLIDE) of this scale, with or without classifier-free guidance; pixel "
                            "models use a noise-aware CLIP, latent models a CLIP on the decoded x0")
GUIDANCE_CLIP = Option("guidance_clip", str, None, metavar="NAME_OR_DIR", served=False,  # a path on the server's disk
                       help="with clip_guidance: the CLIP that steers (default: shapes-clip-noised-16 for the pixel "
                            "cascade's 16 px base, shapes-clip for latent models)")
STRENGTH = Option("strength", float, None, 0.0, 1.0, low_open=True,
                  help="image-to-image: how far into the noise the image goes (default 0.6; 1: ignore it)")
RESAMPLE = Option("resample", int, 1, 1, 50, help="RePaint's resamplings per step (above 1 needs the ddpm or ddim sampler)")

# Pixel cascades (Imagen, unCLIP's decoder).
THRESHOLDING = Option("thresholding", str, None, choices=("none", "static", "dynamic"), help="Imagen's x0 thresholding")
THRESHOLD_PERCENTILE = Option("threshold_percentile", float, None, 0.0, 1.0, low_open=True,
                              help="dynamic thresholding's percentile p of |x0| (default 0.95, DeepFloyd IF's)")
THRESHOLD_MAX_VALUE = Option("threshold_max_value", float, None, 1.0, INF,
                             help="cap on dynamic thresholding's s in every stage (default: 1.5 base, 1.0 SR, as "
                                  "DeepFloyd IF; inf: uncapped, Imagen's pseudocode)")
AUG_LEVEL = Option("aug_level", float, None, 0.0, 1.0, help="noise level of the SR stages' low-resolution input")
SR_STEPS = Option("sr_steps", int, None, 1, 1000, help="sampling steps of each SR stage")
SR_GUIDANCE_SCALE = Option("sr_guidance_scale", float, None, 0.0, 100.0,
                           help="classifier-free guidance of the SR stages (default: the model's, else guidance_scale)")
STAGES = Option("stages", int, None, 1, 8, help="run only the first STAGES stages of the cascade")

# unCLIP's prior.
PRIOR_GUIDANCE_SCALE = Option("prior_guidance_scale", float, None, 0.0, 100.0,
                              help="classifier-free guidance of the prior (text -> CLIP image embedding)")
PRIOR_STEPS = Option("prior_steps", int, None, 1, 1000, help="the prior's sampling steps")
PRIOR_CANDIDATES = Option("prior_candidates", int, None, 1, 64, metavar="K",
                          help="draw K image embeddings and keep the one nearest the text embedding (the paper's trick)")
CONDITIONING = Option("conditioning", str, None, choices=("image", "text", "caption"),
                      help="decode the prior's image embedding (default), the CLIP text embedding, or the caption alone")

LATENT_DIFFUSION = (STEPS, GUIDANCE_SCALE, SAMPLER, NEGATIVE_PROMPT, ETA, CLIP_GUIDANCE, GUIDANCE_CLIP, STRENGTH,
                    BATCH_SIZE)
_CASCADE = (STEPS, GUIDANCE_SCALE, SAMPLER, NEGATIVE_PROMPT, ETA, THRESHOLDING, THRESHOLD_PERCENTILE,
            THRESHOLD_MAX_VALUE, AUG_LEVEL, SR_STEPS, SR_GUIDANCE_SCALE, STAGES, STRENGTH, BATCH_SIZE)
IMAGEN = _CASCADE + (CLIP_GUIDANCE, GUIDANCE_CLIP)
UNCLIP = _CASCADE + (PRIOR_GUIDANCE_SCALE, PRIOR_STEPS, PRIOR_CANDIDATES, CONDITIONING)
