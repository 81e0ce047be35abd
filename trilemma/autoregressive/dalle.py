"""Text-to-image as next-token prediction (DALL-E, Ramesh et al., 2021; Parti, Yu et al., 2022).

One decoder-only transformer (transformers' `GPT2LMHeadModel`) reads one sequence: the prompt's
tokens (padded to a fixed length, so image tokens always sit at the same positions), a
begin-of-image token, then the image's VQ tokens in raster order; it learns cross-entropy on the
image tokens. Condition dropout (the prompt replaced by the empty one) teaches the same network the
unconditional distribution, so sampling can use classifier-free guidance on the logits (Parti;
dalle-mini's "super conditioning"): logits = uncond + s (cond - uncond).

Sampling is an explicit loop, not `generate()`, so the guided pair, the KV cache (on or off, to
measure it) and per-image seeds are in one place; temperature, top-k and top-p are transformers'
logits warpers. Reranking draws several candidates per prompt and keeps the best by any scoring
function (DALL-E's CLIP reranking); it is never the benchmark's own scorer (see the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

from trilemma.autoencoders.vq import VQTokenizer
from trilemma.autoregressive.options import DALLE
from trilemma.data.training import TrainingInputs
from trilemma.model import TextToImageModel, check_prompts, image_seeds, to_pil
from trilemma.options import CANDIDATES
from trilemma.progress import progress as progress_bar
from trilemma.progress import report_step
from trilemma.text.tokenizer import PromptTokenizer


@dataclass
class DalleConfig:
    vq: dict = field(default_factory=dict)  # the image tokenizer's config (its weights ship inside this model)
    tokenizer: dict = field(default_factory=lambda: PromptTokenizer().to_config())
    n_layer: int = 6
    n_embd: int = 256
    n_head: int = 8
    dropout: float = 0.0
    condition_dropout: float = 0.1
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float = 3.0


class DalleTransformer(TextToImageModel):
    family = "autoregressive"
    config_class = DalleConfig
    init_keys = ("vq",)  # the trained VQ tokenizer
    generate_options = DALLE

    def __init__(self, config: DalleConfig):
        super().__init__()
        self.config = config
        self.tokenizer = PromptTokenizer.from_config(config.tokenizer)
        self._set_vq(VQTokenizer.from_config(config.vq))
        self.text_length = self.tokenizer.max_length
        self.image_length = self.vq.config.tokens_per_side ** 2
        # Vocabulary: text tokens, then begin-of-image, then the codebook.
        self.boi = self.tokenizer.vocab_size
        self.image_offset = self.boi + 1
        vocab = self.image_offset + self.vq.config.codebook_size
        self.gpt = GPT2LMHeadModel(GPT2Config(
            vocab_size=vocab, n_positions=self.text_length + self.image_length, n_embd=config.n_embd,
            n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=config.dropout, embd_pdrop=config.dropout,
            attn_pdrop=config.dropout, bos_token_id=self.boi, eos_token_id=self.boi, tie_word_embeddings=True))

    def _set_vq(self, vq: VQTokenizer) -> None:
        self.vq = vq.requires_grad_(False).eval()  # trained on its own first, then frozen
        self.config.vq = vq.to_config()
        self.resolution = vq.config.resolution

    def train(self, mode: bool = True):
        super().train(mode)
        self.vq.eval()  # frozen: its codebook must not move
        return self

    # --- sequences ------------------------------------------------------------------
    def text_ids(self, prompts: list[str]) -> torch.Tensor:
        ids, _ = self.tokenizer(prompts)
        return ids.to(self.gpt.device)

    def sequence(self, text_ids: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """[text (padded), BOI, image tokens but the last]: position text_length + i predicts image token i."""
        b = text_ids.shape[0]
        boi = torch.full((b, 1), self.boi, dtype=torch.long, device=text_ids.device)
        return torch.cat([text_ids, boi, image_tokens.flatten(1)[:, :-1] + self.image_offset], dim=1)

    # --- training ---------------------------------------------------------------------
    def core_networks(self):
        return [self.gpt]

    def configure_optimizers(self, learning_rate: float, weight_decay: float = 0.0):
        return {"model": torch.optim.AdamW(self.gpt.parameters(), lr=learning_rate, weight_decay=weight_decay, betas=(0.9, 0.96))}

    def init_training(self, init: dict, device) -> None:
        """Start from the trained VQ tokenizer (init.vq)."""
        source = init.get("vq")
        if source:
            vq = VQTokenizer.from_pretrained(source)
            if vq.config.tokens_per_side ** 2 != self.image_length or vq.config.codebook_size != self.vq.config.codebook_size:
                raise ValueError(f"{source}: its token grid or codebook differs from the one this transformer was built for; "
                                 "set the model's 'vq' config to match it")
            self._set_vq(vq)
        self.vq.to(device)

    def training_inputs(self) -> TrainingInputs:
        """The VQ tokenizer's image tokens, encoded once."""
        return TrainingInputs(self.resolution, "tokens", self.vq)

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        tokens = batch["image_tokens"] if "image_tokens" in batch else self.vq.encode(batch["pixel_values"])
        b = tokens.shape[0]
        drop = torch.rand(b) < self.config.condition_dropout
        ids = self.text_ids(["" if d else t for d, t in zip(drop.tolist(), batch["text"])])
        # Only the image tokens are targets (positions text_length ...), their logits restricted to the codebook.
        image_logits = self.gpt(self.sequence(ids, tokens)).logits[:, self.text_length:, self.image_offset:]
        loss = F.cross_entropy(image_logits.reshape(-1, image_logits.shape[-1]), tokens.flatten().long())
        return {"loss": loss, "bits_per_token": loss.detach() / np.log(2)}

    # --- sampling ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts, seed: int = 0, use_cache: bool = True, candidates: int = 1,
                 reranker: Callable | None = None, progress: bool = False, **options):
        """One image per prompt. With `candidates` > 1, `reranker(images, prompts) -> scores` keeps the best.
        `options`: guidance_scale, temperature, top_k, top_p, batch_size (`generate_options`)."""
        prompts = check_prompts(prompts)
        given = self.parse_options(**options)
        guidance_scale, temperature, top_k, top_p = given.guidance_scale, given.temperature, given.top_k, given.top_p
        batch_size = given.batch_size
        candidates = CANDIDATES.check(candidates)
        if candidates > 1 and reranker is None:
            raise ValueError("reranking needs a reranker(images, prompts) -> scores")
        options = dict(guidance_scale=self.config.guidance_scale if guidance_scale is None else guidance_scale,
                       temperature=self.config.temperature if temperature is None else temperature,
                       top_k=self.config.top_k if top_k is None else top_k, top_p=self.config.top_p if top_p is None else top_p,
                       use_cache=use_cache, progress=progress)
        if options["temperature"] <= 0:
            raise ValueError("temperature must be positive")
        seeds_all = image_seeds(seed, len(prompts))
        best = None
        for c in range(candidates):
            images = []
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                # Candidate c of prompt i draws with seed (seed + i, c): more candidates never change the first.
                seeds = [int(np.random.SeedSequence([seeds_all[start + i], c]).generate_state(1, np.uint64)[0] >> 1) if c else seeds_all[start + i]
                         for i in range(len(chunk))]
                images += to_pil(self.sample_tokens_to_images(chunk, seeds, **options))
            if candidates == 1:
                return images
            scores = [float(s) for s in reranker(images, prompts)]
            best = [(sc, im) for sc, im in zip(scores, images)] if best is None else [
                (sc, im) if sc > b[0] else b for b, sc, im in zip(best, scores, images)]
        return [im for _, im in best]

    def sample_tokens_to_images(self, prompts, seeds, **options) -> torch.Tensor:
        tokens = self.sample_tokens(prompts, seeds, **options)
        return self.vq.decode(tokens.view(-1, self.vq.config.tokens_per_side, self.vq.config.tokens_per_side))

    @torch.no_grad()
    def sample_tokens(self, prompts: list[str], seeds: list[int], guidance_scale: float, temperature: float,
                      top_k: int | None, top_p: float | None, use_cache: bool = True, progress: bool = False) -> torch.Tensor:
        b, k = len(prompts), self.vq.config.codebook_size
        device = self.gpt.device
        cfg = guidance_scale != 1.0
        ids = self.text_ids(prompts)
        if cfg:
            ids = torch.cat([ids, self.text_ids([""] * b)])
        seq = torch.cat([ids, torch.full((ids.shape[0], 1), self.boi, dtype=torch.long, device=device)], dim=1)
        warpers = LogitsProcessorList([w for w in (TopKLogitsWarper(top_k) if top_k else None,
                                                   TopPLogitsWarper(top_p) if top_p is not None and top_p < 1.0 else None) if w])
        # Gumbel noise drawn per image up front: an image depends on its seed alone, not on its batch.
        gumbel = torch.stack([-torch.log(-torch.log(torch.rand(self.image_length, k, generator=torch.Generator().manual_seed(s))
                                                     .clamp(1e-10, 1 - 1e-7))) for s in seeds]).to(device)
        out, past, new = None, None, seq
        tokens = torch.empty(b, self.image_length, dtype=torch.long, device=device)
        for i in progress_bar(range(self.image_length), enabled=progress, leave=False, desc="tokens"):
            if use_cache:
                out = self.gpt(new, past_key_values=past, use_cache=True)
                past = out.past_key_values
            else:
                out = self.gpt(seq, use_cache=False)
            logits = out.logits[:, -1, self.image_offset:].float()
            if cfg:
                cond, uncond = logits.chunk(2)
                logits = uncond + guidance_scale * (cond - uncond)
            logits = warpers(seq[:b], logits / temperature)
            tokens[:, i] = (F.log_softmax(logits, dim=-1) + gumbel[:, i]).argmax(-1)
            new = (tokens[:, i:i + 1] + self.image_offset).repeat(2 if cfg else 1, 1)
            seq = torch.cat([seq, new], dim=1)
            report_step("tokens", i + 1, self.image_length)
        return tokens
