"""The HTTP API and the page: FastAPI, documented at /docs (OpenAPI), served by uvicorn.

Every request is checked before it is queued, with the rules of the Python API (the models' declared options,
`trilemma.options`, from which the request fields are built; `check_prompts`, the editing checks): bad input is answered 4xx with one line per bad field, never 500 and never a
queued job that fails later. The page (`page/`) is a client of this API and nothing more: whatever it does, a
script can do the same way.
"""

import asyncio
import base64
import hmac
import inspect
import io
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, create_model

from trilemma import __version__
from trilemma.diffusion.editing import box_mask, mask_tensor  # editing's shared mask helpers, not a model
from trilemma.diffusion.options import SAMPLER, STRENGTH, samplers_for
from trilemma.options import GUIDANCE_SCALE, INF, MAX_SEED, NEGATIVE_PROMPT, STEPS, Option
from trilemma.registry import DEFAULT_MODEL, GENERATE_OPTIONS, INPAINTING_MODEL, generate_options, model_class
from trilemma.serve.jobs import FINISHED, Job, JobManager, QueueFull

PAGE = Path(__file__).parent / "page"
UPLOAD_FORMATS = ("PNG", "JPEG", "MPO", "WEBP")  # MPO: what many cameras' JPEGs open as


@dataclass
class Limits:
    """Per-request caps (A1111 and text-generation servers set the same kind)."""
    max_images: int = 8
    max_steps: int = 200
    max_prompt_chars: int = 500
    max_upload_bytes: int = 8 * 2**20
    max_upload_side: int = 4096


class BadInput(Exception):
    def __init__(self, errors: list[tuple[str, str]], status: int = 422, headers: dict | None = None):
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))
        self.errors, self.status, self.headers = errors, status, headers


def _field(option: Option) -> tuple:
    """A request field from an option's declaration: its type (choices as a Literal), range (ge/gt/le) and help, so
    /openapi.json shows each option with its range. Null: the model's default."""
    bounds = {}
    if option.low is not None:
        bounds["gt" if option.low_open else "ge"] = option.low
        if option.high != INF:
            bounds["le"] = option.high
    described = f"{option.help}" + (f"; in {option.bounds()}" if bounds else "")
    if option.type is str and not option.choices and option.default is not None:
        return str, Field(option.default, description=described)
    kind = Literal[option.choices] if option.choices else option.type
    return kind | None, Field(None, description=described + "; null: the model's default", **bounds)


def served_options() -> dict[str, Option]:
    """The options of every registered model that a request may set (trilemma.registry.generate_options), by name."""
    found = {}
    for class_name in GENERATE_OPTIONS:
        for option in generate_options(class_name):
            if option.served and option.name not in ("seed", *IMAGE_OPTIONS):
                found.setdefault(option.name, option)
    return found


IMAGE_OPTIONS = ("strength",)  # image-to-image's: /api/img2img takes it, beside its image, and /api/generate does not
OPTION_FIELDS = ("seed", "num_images")  # a request's fields that every model takes, besides its declared options


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int | None = Field(None, ge=-1, le=MAX_SEED,
                             description="image k uses seed + k; null or -1: a random seed, which the job reports")
    num_images: int = Field(1, ge=1, description="images to draw (the server caps it; /api/health says the caps)")


def request_model() -> type[BaseModel]:
    """The body of /api/generate: the prompt, the model, and one field per declared option of the registered models
    (leave one out, or null, for the model's own default). Built when an app is made, from the registry as it then
    is; which model takes which option: /api/models ("options", and "fields" with their ranges)."""
    options = {name: _field(option) for name, option in served_options().items()}
    return create_model(
        "GenerateRequest", __base__=_Request, __doc__="A text-to-image job: the prompt, the model and its sampling options.",
        prompt=(str, Field(..., description="what the image shows", examples=["a red circle to the left of a blue square"])),
        model=(str | None, Field(None, description="a model of /api/models (default: /api/health's default_model)")),
        **options)


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., examples=["two green squares"])
    negative_prompt: str = ""
    seed: int | None = Field(None, ge=-1, le=MAX_SEED)
    models: list[str] | None = Field(None, description="default: every model of the server")


class _EditFields(BaseModel):
    # "allow", not "forbid": FastAPI hands a form model the file parts too. Unknown fields are refused in `edit`.
    model_config = ConfigDict(extra="allow")
    prompt: str = ""
    model: str | None = None
    seed: int | None = Field(None, ge=-1, le=MAX_SEED)
    num_images: int = Field(1, ge=1)
    box: str | None = Field(None, description="inpaint without a mask file: 'x0,y0,x1,y1' in pixels of the image")


# The form fields of an edit (the image and mask come as files); its options are the same declarations as generate's.
EditForm = create_model("EditForm", __base__=_EditFields, **{o.name: _field(o) for o in
                                                              (NEGATIVE_PROMPT, STEPS, GUIDANCE_SCALE, SAMPLER, STRENGTH)})


# --- what the server can draw -------------------------------------------------------------------------------------
def describe_models(models: dict[str, Path]) -> dict[str, dict]:
    """Each model's family, the options its `generate` takes, its edits and its measured scores, read from its
    config.json and class, without loading its weights."""
    out = {}
    for name, path in models.items():
        config = json.loads((path / "config.json").read_text())
        klass = model_class(config["model_class"])
        accepted = set(inspect.signature(klass.generate).parameters)
        declared = {o.name: o for o in getattr(klass, "generate_options", ()) if o.served and o.name not in IMAGE_OPTIONS}
        model_config = config.get("config", {})
        scores = json.loads((path / "scores.json").read_text()) if (path / "scores.json").is_file() else {}
        defaults = {k: model_config.get(c) for k, c in (("steps", "sampling_steps"), ("guidance_scale", "guidance_scale"),
                                                         ("sampler", "sampler")) if model_config.get(c) is not None}
        out[name] = {
            "name": name, "family": config["family"], "model_class": config["model_class"],
            # the samplers its training allows (a rectified-flow model takes euler/heun, a noise schedule ddpm/ddim)
            "samplers": list(samplers_for(model_config.get("prediction_type"))) if "sampler" in declared else [],
            "options": ["seed", "num_images", *declared],
            "defaults": defaults,
            # the declarations of its options, from which the page draws its form (the default: this model's)
            "fields": [{**o.describe(), "default": defaults.get(k, o.describe()["default"])} for k, o in declared.items()],
            "edits": [e for e, ok in (("inpaint", hasattr(klass, "inpaint")), ("img2img", "init_image" in accepted),
                                      ("vary", hasattr(klass, "vary"))) if ok],
            # the sides the model draws at (a cascade's every stage): a mask must survive resizing to each
            "resolutions": model_config.get("resolutions") or [model_config.get("resolution", 64)],
            "scores": {k: scores[k] for k in ("test", "test-novel", "n_per_split", "benchmark", "parameters") if k in scores},
        }
    return out


# --- checks --------------------------------------------------------------------------------------------------------
def _fix_seed(seed: int | None) -> int:
    return secrets.randbelow(2**32) if seed is None or seed == -1 else seed


def check_common(params: dict, info: dict, limits: Limits, errors: list, prompt_required: bool = True) -> None:
    prompt = params.get("prompt", "")
    if prompt_required and not prompt.strip():
        errors.append(("prompt", "is empty; say what the image shows, for example 'a red circle'"))
    check_texts(params, limits, errors)
    _check_options(params, info, limits, errors)


def check_texts(params: dict, limits: Limits, errors: list) -> None:
    for name in ("prompt", "negative_prompt"):
        text = params.get(name) or ""
        if len(text) > limits.max_prompt_chars:
            errors.append((name, f"is {len(text)} characters; at most {limits.max_prompt_chars}"))
        elif "\x00" in text:
            errors.append((name, "holds a NUL character; send plain text"))
        else:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON but no text
                errors.append((name, "is not valid Unicode text; send UTF-8 text"))


def _check_options(params: dict, info: dict, limits: Limits, errors: list) -> None:
    seed = params.get("seed")
    if isinstance(seed, int) and seed + params.get("num_images", 1) - 1 > MAX_SEED:
        errors.append(("seed", f"image k uses seed + k, and seed + {params['num_images'] - 1} is over 2^62 - 1; "
                               "use a smaller seed"))
    if params.get("num_images", 1) > limits.max_images:
        errors.append(("num_images", f"at most {limits.max_images} a request on this server, got {params['num_images']}"))
    for name in ("steps", "sr_steps", "prior_steps"):  # every count of sampling steps: each costs a forward pass
        if (params.get(name) or 0) > limits.max_steps:
            errors.append((name, f"at most {limits.max_steps} on this server, got {params[name]}"))
    unsupported = [k for k, v in params.items() if v not in (None, "") and k in OPTION_FIELDS + tuple(served_options())
                   and k not in info["options"] and k not in ("negative_prompt",)]
    if params.get("negative_prompt") and "negative_prompt" not in info["options"]:
        unsupported.append("negative_prompt")
    sampler = params.get("sampler")
    if sampler and info.get("samplers") and sampler not in info["samplers"] and "sampler" not in unsupported:
        errors.append(("sampler", f"{info['name']} samples with {', '.join(info['samplers'])}, not {sampler!r}"))
    for k in unsupported:
        errors.append((k, f"{info['name']} ({info['family']}) does not take {k}; it takes "
                          f"{', '.join(o for o in info['options'] if o not in ('seed', 'num_images')) or 'no options'}"))


def with_defaults(params: dict, info: dict) -> dict:
    """The request's options with the model's defaults filled in where it left them out: the job, its gallery entry
    and its PNG's parameters then say what was used (Steps, Sampler, CFG scale), as A1111's do."""
    return {**{k: v for k, v in info["defaults"].items() if k in info["options"]}, **params}


class Server:
    """The app's state: the jobs, the models, the caps and the key."""

    def __init__(self, manager: JobManager, limits: Limits, api_key: str | None):
        self.manager, self.limits, self.api_key = manager, limits, api_key
        self.models = describe_models(manager.models)
        # What a request without a model draws with: the library's default model when served, as the CLI's.
        self.default_model = DEFAULT_MODEL if DEFAULT_MODEL in self.models else next(iter(self.models))

    def model_info(self, name: str | None, errors: list, need: str | None = None) -> dict | None:
        if name is None:
            if not need:
                return self.models[self.default_model]
            able = self._preferred(need)
            if not able:
                errors.append(("model", f"no model of this server can {need}"))
                return None
            return self.models[able[0]]
        if name not in self.models:
            errors.append(("model", f"unknown model {name!r}; this server has {', '.join(self.models)}"))
            return None
        info = self.models[name]
        if need and need not in info["edits"]:
            able = [m for m, i in self.models.items() if need in i["edits"]]
            errors.append(("model", f"{name} ({info['model_class']}) does not {need}"
                                    + (f"; these do: {', '.join(able)}" if able else "")))
        return info

    def _preferred(self, need: str) -> list[str]:
        able = [m for m, i in self.models.items() if need in i["edits"]]
        return sorted(able, key=lambda m: m != INPAINTING_MODEL)


def _params(model: BaseModel, drop=()) -> dict:
    return {k: v for k, v in model.model_dump().items() if k not in drop and (v is not None or k == "seed")}


async def read_upload(upload: UploadFile, name: str, limits: Limits, errors: list) -> Image.Image | None:
    data = await upload.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise BadInput([(name, f"is over {limits.max_upload_bytes // 2**20} MB; send a smaller image")], status=413)
    if not data:
        errors.append((name, "is empty; send a PNG, JPEG or WebP image"))
        return None
    try:
        image = Image.open(io.BytesIO(data))
        fmt = image.format
        if fmt not in UPLOAD_FORMATS:
            raise BadInput([(name, f"is a {fmt} image; send a PNG, JPEG or WebP")], status=415)
        if max(image.size) > limits.max_upload_side:
            errors.append((name, f"is {image.size[0]}x{image.size[1]}; at most {limits.max_upload_side} pixels a side"))
            return None
        image.load()
        image = image.convert("RGB")
    except BadInput:
        raise
    except Exception:  # PIL's many ways of failing on a damaged file
        raise BadInput([(name, "is not a readable image; send a PNG, JPEG or WebP")], status=415) from None
    return image


# --- the app -------------------------------------------------------------------------------------------------------
def create_app(manager: JobManager, limits: Limits | None = None, api_key: str | None = None) -> FastAPI:
    server = Server(manager, limits or Limits(), api_key)
    # The body of /api/generate, from the registry's declarations. (This module does not postpone annotations, so
    # that the endpoints' annotations are this class, a local, when FastAPI reads them.)
    GenerateRequest = request_model()
    limits = server.limits
    app = FastAPI(title="trilemma", version=__version__,
                  description="Text-to-image generation, editing and side-by-side comparison of diffusion, "
                              "autoregressive and GAN models. Jobs are queued and run one forward pass at a time; "
                              "requests for the same model and options that wait together share one (dynamic batching).")
    app.state.server = server

    def require_key(request: Request) -> None:
        if server.api_key is None:
            return
        given = request.headers.get("x-api-key") or request.query_params.get("api_key") or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:]
        if not hmac.compare_digest(given.encode(), server.api_key.encode()):
            raise BadInput([("api_key", "missing or wrong; send the header 'X-API-Key: KEY' (or "
                                        "'Authorization: Bearer KEY', or ?api_key=KEY)")], status=401)

    keyed = [Depends(require_key)]

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, e: BadInput):
        return JSONResponse({"detail": str(e), "errors": [{"field": f, "message": m} for f, m in e.errors]},
                            status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        errors, seen = [], set()
        for err in e.errors():
            loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "form")]
            name = ".".join(loc) or "body"
            if name in seen:
                continue  # one line per field: a union type reports each of its arms
            seen.add(name)
            message = err.get("msg", "is invalid")
            if err.get("type") == "extra_forbidden":
                message = "is not a field of this request; see /docs"
            elif err.get("type") == "missing":
                message = "is required"
            elif err.get("type") == "json_invalid":
                name, message = "body", "is not valid JSON"
            elif "input" in err and err.get("type") != "model_attributes_type":
                message = f"{message}, got {repr(err['input'])[:60]}"
            errors.append((name, message))
        return await bad_input(request, BadInput(errors))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):  # a defect of trilemma's: one line, 500
        return JSONResponse({"detail": f"internal error: {type(e).__name__}: {str(e)[:200]} (a bug; please report it)"},
                            status_code=500)

    app.add_middleware(BodyCap, limit=2 * limits.max_upload_bytes + 2**20)

    # --- the page --------------------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((PAGE / "index.html").read_text())

    app.mount("/static", StaticFiles(directory=PAGE), name="static")

    # --- reading -----------------------------------------------------------------------------------------------------
    @app.get("/api/health", summary="Whether the server runs; its queue, caps and whether it asks for a key")
    async def health():
        m = server.manager
        passes = list(m.batches)
        return {"status": "ok", "default_model": server.default_model, "queued": len(m.queue), "running": len(m.running), "queue_size": m.queue_size,
                "max_batch_images": m.max_batch_images, "limits": limits.__dict__, "auth": server.api_key is not None,
                "recent_passes": len(passes),
                "images_per_pass": round(sum(passes) / len(passes), 2) if passes else None}

    @app.get("/api/models", summary="The models this server draws with: options, edits and measured scores",
             dependencies=keyed)
    async def models():
        return list(server.models.values())

    @app.get("/api/jobs", summary="Every job of this server's life, newest first (the gallery)", dependencies=keyed)
    async def jobs(limit: Annotated[int, Query(ge=1, le=1000)] = 100, group: str | None = None,
                   status: Literal["queued", "running", "done", "failed", "cancelled"] | None = None):
        listed = [j for j in reversed(list(server.manager.jobs.values()))
                  if (group is None or j.group == group) and (status is None or j.status == status)]
        return [j.public() for j in listed[:limit]]

    def find(job_id: str) -> Job:
        job = server.manager.get(job_id)
        if job is None:
            raise BadInput([("job_id", f"no job {job_id[:40]!r} on this server (it keeps its last "
                                       f"{server.manager.history} jobs, and none from before it started)")], status=404)
        return job

    @app.get("/api/jobs/{job_id}", summary="A job: status, progress, parameters, result links",
             description="With ?wait=S, answers when the job has finished or after S seconds (a long poll).",
             dependencies=keyed)
    async def job(job_id: str, wait: Annotated[float, Query(ge=0, le=60)] = 0):
        job = find(job_id)
        # Waiting on the event loop, not in a thread: a thread per long poll would exhaust the executor's few threads.
        deadline = time.monotonic() + wait
        while job.status not in FINISHED and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return job.public(server.manager.position(job))

    @app.get("/api/jobs/{job_id}/events", response_class=EventSourceResponse, dependencies=keyed,
             summary="Server-sent events: the job each time it changes, and its preview image while it runs",
             description="Events: `job` (the job, as GET /api/jobs/{id}), `preview` (a PNG as base64, where the "
                         "family has one), and a last `job` once it is done, failed or cancelled.")
    async def events(job: Job = Depends(find)):
        # The job is found by a dependency, before the stream starts: an unknown id is a 404, not a broken stream.
        seen, preview = -1, None
        job.watchers += 1
        try:
            while True:
                if job.version != seen:
                    seen = job.version
                    yield ServerSentEvent(event="job", data=job.public(server.manager.position(job)))
                    current = job.preview
                    if current is not None and current is not preview and job.status == "running":
                        preview = current
                        yield ServerSentEvent(event="preview", data={"png": base64.b64encode(preview).decode()})
                    if job.status in FINISHED:
                        return
                await asyncio.sleep(0.05)
        finally:
            job.watchers -= 1

    @app.get("/api/jobs/{job_id}/images/{k}", summary="Image k of a job, as a PNG carrying its parameters",
             response_class=FileResponse, dependencies=keyed)
    async def image(job_id: str, k: int, download: bool = False):
        job = find(job_id)
        if not 0 <= k < len(job.images):
            raise BadInput([("k", f"job {job_id} has {len(job.images)} images ({job.status})")], status=404)
        name, path = f"trilemma-{job.id}-{k}.png", server.manager.image_path(job, k)
        if not path.is_file():
            raise BadInput([("k", f"{path.name} is no longer in the output folder")], status=404)
        return FileResponse(path, media_type="image/png", filename=name if download else None)

    @app.get("/api/jobs/{job_id}/images", summary="A job's images as base64 PNGs in JSON", dependencies=keyed)
    async def images_base64(job_id: str):
        job = find(job_id)
        paths = [server.manager.image_path(job, k) for k in range(len(job.images))]
        if not all(p.is_file() for p in paths):
            raise BadInput([("job_id", f"job {job.id}'s images are no longer in the output folder")], status=404)
        return {"id": job.id, "status": job.status, "images": [base64.b64encode(p.read_bytes()).decode() for p in paths]}

    @app.post("/api/jobs/{job_id}/cancel", summary="Cancel a job: a queued one leaves the queue, a running one stops "
                                                   "at its next step", dependencies=keyed)
    async def cancel(job_id: str):
        job = find(job_id)
        server.manager.cancel(job)
        return job.public()

    # --- submitting ---------------------------------------------------------------------------------------------------
    def queue(jobs: list[Job]) -> list[Job]:
        try:
            return server.manager.submit(jobs)
        except QueueFull as e:
            raise BadInput([("queue", f"is full ({server.manager.queue_size} jobs waiting); retry in {e.retry_after} s")],
                           status=429, headers={"Retry-After": str(e.retry_after)}) from None

    def accepted(jobs: list[Job]) -> JSONResponse:
        body = jobs[0].public(server.manager.position(jobs[0])) if len(jobs) == 1 else \
            {"group": jobs[0].group, "jobs": [j.public(server.manager.position(j)) for j in jobs]}
        return JSONResponse(body, status_code=202, headers={"Location": f"/api/jobs/{jobs[0].id}"})

    @app.post("/api/generate", status_code=202, dependencies=keyed,
              summary="Queue a text-to-image job; answers 202 with the job (poll it, or stream /events)",
              responses={422: {"description": "one line per bad field"}, 429: {"description": "queue full; see Retry-After"}})
    async def generate(request: GenerateRequest):
        errors = []
        info = server.model_info(request.model, errors)
        params = _params(request, drop=("model",))
        if info:
            check_common(params, info, limits, errors)
        if errors:
            raise BadInput(errors)
        params = {k: v for k, v in params.items() if k in info["options"] or k == "prompt"}  # drops unset ones only
        params = with_defaults(params, info)
        params["seed"] = _fix_seed(params.get("seed"))
        return accepted(queue([Job("generate", info["name"], params)]))

    @app.post("/api/compare", status_code=202, dependencies=keyed,
              summary="One prompt and seed on several models (default: all), each with its own defaults, side by side")
    async def compare(request: CompareRequest):
        errors = []
        names = list(server.models) if request.models is None else request.models
        if not names:  # [] is no model, not every model: say so rather than draw with all
            errors.append(("models", "is empty; name at least one model of /api/models, or leave it out for all"))
        for i, name in enumerate(names):  # named as the request names it (models.1), as pydantic names a bad item
            found = []
            server.model_info(name, found)
            errors += [(f"models.{i}", message) for _, message in found]
        params = {"prompt": request.prompt, "negative_prompt": request.negative_prompt, "num_images": 1}
        if not errors:  # the negative prompt is checked once here: a model that takes none is checked without it
            check_texts({"negative_prompt": request.negative_prompt}, limits, errors)
        for name in names if not errors else []:
            info = server.models[name]
            one = dict(params) if "negative_prompt" in info["options"] else {**params, "negative_prompt": ""}
            check_common(one, info, limits, errors)
            if errors:
                break
        if not errors and len(names) > server.manager.queue_size:
            errors.append(("models", f"{len(names)} models are more jobs than this server's queue holds "
                                     f"({server.manager.queue_size}); compare fewer at a time"))
        if errors:
            raise BadInput(errors[:1] if errors[0][0] == "prompt" else errors)
        seed, group = _fix_seed(request.seed), secrets.token_hex(6)
        jobs = []
        for name in names:
            one = {**params, "seed": seed}
            if "negative_prompt" not in server.models[name]["options"]:
                one.pop("negative_prompt")
            one = with_defaults(one, server.models[name])
            jobs.append(Job("generate", name, one, group=group))
        return accepted(queue(jobs))

    async def edit(kind: str, form: EditForm, image: UploadFile, mask: UploadFile | None) -> JSONResponse:
        errors = [(k, "is not a field of this request; see /docs") for k in (form.model_extra or {})
                  if k not in ("image", "mask")]
        info = server.model_info(form.model, errors, need=kind)
        params = _params(form, drop=("model", "box", "image", "mask", *(form.model_extra or {})))
        if kind != "img2img" and form.strength is not None:
            errors.append(("strength", "is image-to-image's; this request is " + kind))
        if kind == "vary":
            if form.num_images > 64:
                errors.append(("num_images", f"at most 64 variations of an image, got {form.num_images}"))
            for k in ("sampler", "negative_prompt"):
                if params.get(k):
                    errors.append((k, "variations take steps, guidance_scale, seed, num_images and a caption (prompt) only"))
                    params.pop(k)
        # A mask sent to img2img or vary reaches the form's extra fields (those endpoints take no mask file).
        sent_mask = mask is not None or "mask" in (form.model_extra or {})
        if kind != "inpaint" and (sent_mask or form.box):
            errors.append(("mask" if sent_mask else "box", "is inpainting's; this request is " + kind))
        if info:
            check_common({k: v for k, v in params.items() if k != "strength"}, info, limits, errors,
                         prompt_required=kind != "vary")
        source = await read_upload(image, "image", limits, errors)
        inputs = {"image": source} if source is not None else {}
        if kind == "inpaint" and source is not None:
            inputs["mask"] = await _mask(form, mask, source, limits, errors, info["resolutions"] if info else [64])
        if kind == "img2img":
            params["strength"] = 0.6 if form.strength is None else form.strength
            steps = form.steps or (info or {}).get("defaults", {}).get("steps")
            if steps and int(steps * params["strength"]) < 1:
                errors.append(("strength", f"{params['strength']} x {steps} steps leaves no denoising step; raise it"))
        if errors:
            raise BadInput(errors)
        params = {k: v for k, v in params.items() if k in info["options"] or k in ("prompt", "strength")}
        params = with_defaults(params, info)
        params["seed"] = _fix_seed(params.get("seed"))
        return accepted(queue([Job(kind, info["name"], params, inputs=inputs)]))

    @app.post("/api/inpaint", status_code=202, dependencies=keyed,
              summary="Queue an inpainting job: redraw the mask's white region (or a box) to match the prompt")
    async def inpaint(form: Annotated[EditForm, Form()], image: Annotated[UploadFile, File()],
                      mask: Annotated[UploadFile | None, File()] = None):
        return await edit("inpaint", form, image, mask)

    @app.post("/api/img2img", status_code=202, dependencies=keyed,
              summary="Queue an image-to-image job (SDEdit): the image, noised by `strength`, redrawn to the prompt")
    async def img2img(form: Annotated[EditForm, Form()], image: Annotated[UploadFile, File()]):
        return await edit("img2img", form, image, None)

    @app.post("/api/vary", status_code=202, dependencies=keyed,
              summary="Queue image variations (unCLIP): the image's CLIP embedding decoded with other seeds")
    async def vary(form: Annotated[EditForm, Form()], image: Annotated[UploadFile, File()]):
        return await edit("vary", form, image, None)

    return app


async def _mask(form: EditForm, mask: UploadFile | None, image: Image.Image, limits: Limits, errors: list,
                resolutions: list[int]):
    import numpy as np

    if (mask is None) == (form.box is None):
        errors.append(("mask", "send a mask image (white: redraw) or a box 'x0,y0,x1,y1', one of the two"))
        return None
    if form.box is not None:
        try:
            box = [float(v) for v in form.box.split(",")]
            if len(box) != 4:
                raise ValueError
        except ValueError:
            errors.append(("box", f"must be four numbers 'x0,y0,x1,y1', got {form.box[:40]!r}"))
            return None
        try:
            grey = box_mask(tuple(box), *image.size)
        except ValueError as e:
            errors.append(("box", str(e)))
            return None
        return _survives(grey, "box", resolutions, errors)
    m = await read_upload(mask, "mask", limits, errors)
    if m is None:
        return None
    if m.size != image.size:
        errors.append(("mask", f"is {m.size[0]}x{m.size[1]} but the image is {image.size[0]}x{image.size[1]}; "
                               "send a mask of the image's size"))
        return None
    grey = m.convert("L")
    if np.asarray(grey).max() < 128:
        errors.append(("mask", "has no white pixel: paint white where the image should change"))
        return None
    return _survives(grey, "mask", resolutions, errors)


def _survives(mask: Image.Image, field: str, resolutions: list[int], errors: list) -> Image.Image | None:
    """The mask, if it is still a mask at every side the model draws at (a thin stroke on a large upload can vanish
    when resized): checked here, so that the model is never handed an empty one."""
    for side in resolutions:
        try:
            mask_tensor(mask, side)
        except ValueError:
            errors.append((field, f"vanishes at the model's {side}x{side} pixels: make the region larger"))
            return None
    return mask


class BodyCap:
    """Refuses a body over the limit (413) as it arrives, whether it says its Content-Length or comes in chunks, and
    a POST from a page of another origin (403): with no key, a page on any site could otherwise make the visitor's
    browser submit forms to a server on their loopback. Plain ASGI, not BaseHTTPMiddleware, which would sit between
    the event streams and their clients."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        too_large = JSONResponse({"detail": f"body: over {self.limit // 2**20} MB",
                                  "errors": [{"field": "body", "message": f"is over {self.limit // 2**20} MB"}]},
                                 status_code=413)
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await too_large(scope, receive, send)
        origin = headers.get(b"origin")
        if scope["method"] == "POST" and origin and origin.split(b"//")[-1] != headers.get(b"host", b""):
            return await JSONResponse({"detail": "origin: a page of another site may not post here",
                                       "errors": [{"field": "origin", "message": "is not this server"}]},
                                      status_code=403)(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await too_large(scope, receive, send)


class _TooLarge(HTTPException):
    # An HTTPException, so that FastAPI's body parsing passes it on as itself (it turns other errors into a 400).
    def __init__(self):
        super().__init__(status_code=413, detail="body: too large")

