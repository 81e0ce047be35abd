"""The server's jobs: a bounded queue, one worker that batches, progress, cancelling, the gallery.

One worker thread runs every model: on a CPU (or one GPU) two generations at once only share the same cores, and
one at a time keeps memory bounded by one batch. What it gains instead is dynamic batching, as text-generation
servers do: text-to-image requests for the same model and options that wait together run as one forward pass, each
image with its own request's seed (`trilemma.model.image_seeds`), so a request draws the same images batched or
alone. Jobs only ever hold their parameters, their inputs until they run, a preview while they run, and their
results' file names: the images themselves are PNG files in the output folder (`outdir`), as A1111 writes them.
"""

from __future__ import annotations

import io
import json
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from trilemma import __version__
from trilemma.model import TrainableModel
from trilemma.progress import listen

FINISHED = ("done", "failed", "cancelled")


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class Cancelled(Exception):
    pass


@dataclass
class Job:
    kind: str  # "generate", "inpaint", "img2img" or "vary"
    model: str
    params: dict  # what the request asked, as the API shows it back (prompt, seed, steps, ...)
    inputs: dict = field(default_factory=dict)  # edit images (PIL), dropped once the job has run
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    group: str | None = None  # the compare request a job belongs to
    created: float = field(default_factory=time.time)
    status: str = "queued"
    progress: dict = field(default_factory=dict)
    preview: bytes | None = None
    images: list[str] = field(default_factory=list)
    seconds: float | None = None  # wall time of the forward pass it ran in
    batch_images: int = 0  # images in that forward pass (more than its own when batched with others)
    error: str | None = None
    cancel_requested: bool = False
    watchers: int = 0  # open event streams: previews are drawn only for a job someone watches
    version: int = 0  # bumped at every change: the event stream sends a job when its version moves

    @property
    def num_images(self) -> int:
        return self.params.get("num_images", 1)

    def batch_key(self) -> tuple | None:
        """Jobs with equal keys may share one forward pass; None: this job runs alone."""
        if self.kind != "generate":
            return None
        options = {k: v for k, v in self.params.items() if k not in ("prompt", "seed", "num_images")}
        return self.model, json.dumps(options, sort_keys=True)

    def public(self, position: int | None = None) -> dict:
        out = {"id": self.id, "kind": self.kind, "model": self.model, "status": self.status, "params": self.params,
               "created": self.created, "progress": self.progress, "error": self.error, "group": self.group,
               "images": [f"/api/jobs/{self.id}/images/{k}" for k in range(len(self.images))],
               "seconds": self.seconds, "batch_images": self.batch_images,
               "seconds_per_image": round(self.seconds / self.batch_images, 4) if self.seconds and self.batch_images else None}
        if position is not None:
            out["queue_position"] = position
        return out


def parameters_text(job: Job, k: int, size: tuple[int, int]) -> str:
    """A1111's `parameters` text: the prompt, the negative prompt, then "Key: value" pairs. Tools that read
    A1111's PNGs (its PNG Info tab, civitai, ComfyUI's loaders) show them."""
    p = job.params
    lines = [p.get("prompt", "")]
    if p.get("negative_prompt"):
        lines.append(f"Negative prompt: {p['negative_prompt']}")
    pairs = {"Steps": p.get("steps"), "Sampler": p.get("sampler"), "CFG scale": p.get("guidance_scale"),
             "Seed": p["seed"] + k, "Size": f"{size[0]}x{size[1]}", "Model": job.model,
             "Denoising strength": p.get("strength"), "Temperature": p.get("temperature"), "Top k": p.get("top_k"),
             "Top p": p.get("top_p"), "Truncation": p.get("truncation"),
             "Task": job.kind if job.kind != "generate" else None, "Version": "trilemma " + __version__}
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs.items() if value is not None))
    return "\n".join(lines)



def png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)  # tEXt as A1111 writes it; PIL switches to iTXt (UTF-8) for text beyond Latin-1
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


class JobManager:
    """The queue, the worker and the record of every job of this server's life (the gallery)."""

    def __init__(self, models: dict[str, Path], outdir: str | Path, queue_size: int = 32, max_batch_images: int = 32,
                 history: int = 5000, preview_interval: float = 0.25):
        self.models = dict(models)
        self.outdir = Path(outdir)
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.queue_size, self.max_batch_images, self.history = queue_size, max_batch_images, history
        self.preview_interval = preview_interval
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.queue: deque[Job] = deque()
        self.running: list[Job] = []
        self.recent_seconds: deque[float] = deque(maxlen=20)  # per batch, for Retry-After
        self.batches: deque[int] = deque(maxlen=1000)  # images per recent forward pass (/api/health reports them)
        self._hold = 0
        self.condition = threading.Condition()
        self._loaded: dict = {}
        self._stop = False
        self.worker = threading.Thread(target=self._work, name="trilemma-worker", daemon=True)
        self.worker.start()

    # --- requests ---------------------------------------------------------------------------------------------
    def submit(self, jobs: list[Job]) -> list[Job]:
        """Queue the jobs (all or none); QueueFull when there is no room."""
        with self.condition:
            if len(self.queue) + len(jobs) > self.queue_size:
                raise QueueFull(self.retry_after())
            for job in jobs:
                self.jobs[job.id] = job
                self.queue.append(job)
            self._forget_old()
            self.condition.notify_all()
        return jobs

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by a batch: the recent time per forward pass, at least 1."""
        per_batch = sum(self.recent_seconds) / len(self.recent_seconds) if self.recent_seconds else 1.0
        return max(1, min(60, math.ceil(per_batch)))

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        with self.condition:
            try:
                return self.queue.index(job)
            except ValueError:
                return None

    def cancel(self, job: Job) -> None:
        """A queued job leaves the queue now; a running one stops at its next step (or, sharing its forward pass
        with others that still want theirs, its images are dropped)."""
        with self.condition:
            if job.status == "queued":
                self.queue.remove(job)
                self._finish(job, "cancelled")
            elif job.status == "running":
                job.cancel_requested = True
                job.version += 1

    @contextmanager
    def paused(self):
        """Within the block the worker takes no new batch (the one running finishes): jobs submitted meanwhile wait
        together, as under load. For maintenance, and for tests that need requests to meet in the queue."""
        with self.condition:
            self._hold += 1
        try:
            yield
        finally:
            with self.condition:
                self._hold -= 1
                self.condition.notify_all()

    def close(self) -> None:
        with self.condition:
            self._stop = True
            self.condition.notify_all()
        self.worker.join(timeout=30)

    def image_path(self, job: Job, k: int) -> Path:
        return self.outdir / job.images[k]

    def load(self, name: str):
        """The model called `name`, loaded once (in the worker: loading is as slow as a generation)."""
        if name not in self._loaded:
            self._loaded[name] = TrainableModel.from_pretrained(self.models[name])
        return self._loaded[name]

    # --- the worker ------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self.condition:
                self.condition.wait_for(lambda: (self.queue and not self._hold) or self._stop)
                if self._stop:
                    return
                batch = self._take_batch()
                for job in batch:
                    job.status, job.version = "running", job.version + 1
                self.running = batch
            try:
                self._run(batch)
            except Exception as e:  # never let one batch stop the only worker: its jobs fail, the queue goes on
                for job in batch:
                    if job.status not in FINISHED:
                        self._finish(job, "failed", error=f"internal error: {type(e).__name__}: {str(e)[:200]}")
            finally:
                with self.condition:
                    self.running = []
                    self.condition.notify_all()

    def _take_batch(self) -> list[Job]:
        """The oldest job, and the queued jobs that can share its forward pass, up to max_batch_images images."""
        first = self.queue.popleft()
        batch, key, images = [first], first.batch_key(), first.num_images
        if key is not None:
            for job in list(self.queue):
                if job.batch_key() == key and images + job.num_images <= self.max_batch_images:
                    self.queue.remove(job)
                    batch.append(job)
                    images += job.num_images
        return batch

    def _run(self, batch: list[Job]) -> None:
        last_preview = [0.0]
        rows = [sum(job.num_images for job in batch[:i]) for i in range(len(batch))]  # each job's first image

        def on_step(desc, step, total, preview):
            with self.condition:
                if all(job.cancel_requested for job in batch):
                    raise Cancelled()
                stage = batch[0].progress.get("stage", 1)
                if step == 1 and batch[0].progress.get("step", 0) >= 1:  # a cascade's next stage starts
                    stage += 1
                for job in batch:
                    job.progress = {"desc": desc, "step": step, "total": total, "stage": stage}
                    job.version += 1
                watched = any(job.watchers for job in batch)
            if preview is None or not watched or time.perf_counter() - last_preview[0] < self.preview_interval:
                return
            last_preview[0] = time.perf_counter()
            try:
                images = preview(rows)  # one image per job, decoded: not the whole batch
            except Exception:  # a preview is a courtesy: it never fails the job
                return
            pngs = [png_bytes(image) for image in images]
            with self.condition:
                for job, data in zip(batch, pngs):
                    job.preview, job.version = data, job.version + 1

        try:
            model = self.load(batch[0].model)
            started = time.perf_counter()  # after loading: seconds per image is the model's, first use or not
            with listen(on_step):
                results = self._generate(model, batch)
        except Cancelled:
            for job in batch:
                self._finish(job, "cancelled")
            return
        except Exception as e:  # bad input is refused before it is queued: what is left is the model's fault
            if len(batch) > 1:  # run each alone, so that one job's fault fails that job only
                for job in batch:
                    job.progress = {}
                    self._run([job])
                return
            message = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            self._finish(batch[0], "failed", error=message)
            return
        seconds = time.perf_counter() - started
        total = sum(len(r) for r in results)
        self.recent_seconds.append(seconds)
        self.batches.append(total)
        for job, images in zip(batch, results):
            if job.cancel_requested:
                self._finish(job, "cancelled")
                continue
            names = []
            for k, image in enumerate(images):
                name = f"{job.id}-{k}.png"
                (self.outdir / name).write_bytes(png_bytes(image, {
                    "parameters": parameters_text(job, k, image.size),
                    "trilemma": json.dumps({"model": job.model, "kind": job.kind, **job.params, "seed": job.params["seed"] + k})}))
                names.append(name)
            with self.condition:
                job.images = names
                job.seconds, job.batch_images = round(seconds, 4), total
            self._finish(job, "done")
        self._append_log([job for job in batch if job.status == "done"])

    def _generate(self, model, batch: list[Job]) -> list[list[Image.Image]]:
        """Each job's images: one forward pass for the whole batch of text-to-image jobs; an edit alone."""
        first = batch[0]
        options = {k: v for k, v in first.params.items() if k not in ("prompt", "seed", "num_images", "strength")}
        if first.kind == "generate":
            prompts = [job.params["prompt"] for job in batch for _ in range(job.num_images)]
            seeds = [job.params["seed"] + k for job in batch for k in range(job.num_images)]
            flat = model.generate(prompts, seed=seeds, batch_size=len(prompts), **options)
            out, offset = [], 0
            for job in batch:
                out.append(flat[offset:offset + job.num_images])
                offset += job.num_images
            return out
        n, prompt, seed = first.num_images, first.params.get("prompt"), first.params["seed"]
        if first.kind == "inpaint":
            return [model.inpaint([prompt] * n, first.inputs["image"], first.inputs["mask"], seed=seed, **options)]
        if first.kind == "img2img":
            return [model.generate([prompt] * n, seed=seed, init_image=first.inputs["image"],
                                   strength=first.params["strength"], **options)]
        options.pop("negative_prompt", None)
        return [model.vary([first.inputs["image"]], n=n, seed=seed, caption=prompt or None, **options)[0]]

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        with self.condition:
            job.status, job.error, job.inputs, job.preview = status, error, {}, None
            job.version += 1
            self.condition.notify_all()

    def _append_log(self, batch: list[Job]) -> None:
        # metadata.jsonl beside the PNGs, as `trilemma generate` writes: the gallery outlives the server there.
        with open(self.outdir / "metadata.jsonl", "a") as f:
            for job in batch:
                for k, name in enumerate(job.images):
                    f.write(json.dumps({"file_name": name, "text": job.params.get("prompt"), "seed": job.params["seed"] + k,
                                        "model": job.model, "kind": job.kind, "params": job.params}) + "\n")

    def _forget_old(self) -> None:
        """Keep the record of the last `history` jobs (their PNGs stay on disk): memory stays bounded."""
        while len(self.jobs) > self.history:
            oldest_id, oldest = next(iter(self.jobs.items()))
            if oldest.status not in FINISHED:
                break
            del self.jobs[oldest_id]
