"""The HTTP API, fuzzed: 1,000 seeded requests over every route of the app (read from its routes and its OpenAPI
schema, so a new endpoint is fuzzed without a line here), valid and broken: wrong types, NaN and infinities, huge
numbers, missing, unknown and null fields, bad ids, uploads that are no image, bodies that are no JSON.

What must hold (trilemma/serve/api.py's promise): no request is answered 5xx; a request broken in one field is
answered 4xx naming that field; a valid one is accepted (2xx, or 429 naming the queue when it is full); and no job
is lost: every job accepted is found afterwards and ends done or cancelled (never failed: its request was checked).

The requests come from a seeded generator, so a failure names a case that can be run again: FUZZ_SEED and
FUZZ_CASES (a multiple of the suite's 1,000) as in tests/test_fuzz.py. The models are the cheapest that cover every
edit: the shipped GAN, the tiny latent diffusion model of conftest (generate, inpaint, img2img) and, for /api/vary,
shapes-unclip, whose accepted jobs are cancelled while the queue is paused, before they load.
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from dataclasses import dataclass, field

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from starlette.routing import Mount

from trilemma.serve import build_app
from trilemma.serve.api import Limits

SEED = int(os.environ.get("FUZZ_SEED", "0"))
SCALE = float(os.environ.get("FUZZ_CASES", "1"))
SLOW = {"shapes-unclip"}  # cancelled while queued: drawing with it would take most of the test's time
ROUND = 50  # requests a round: half submitted with the worker paused (so no answer depends on its pace), half read
LIMITS = Limits(max_images=4, max_steps=8, max_prompt_chars=200)
EDIT_ROUTES = ("/api/inpaint", "/api/img2img", "/api/vary")
EDIT_FIELDS = ("prompt", "negative_prompt", "seed", "num_images", "steps", "guidance_scale", "sampler")

# Values a valid request may carry, by field name; a field not named here gets one from its schema's type.
VALID = {
    "prompt": ["a red circle", "two blue squares", "a red circle to the left of a blue square", "日本語 😀",
               "x" * 200],
    "negative_prompt": ["", "green"],
    "seed": [0, 7, -1, None, 2**62 - 4],
    "num_images": [1, 1, 2, 4],
    "steps": [2, 3],
    "guidance_scale": [0, 1.5, 4.0, 100],
    "sampler": ["ddim", "dpmsolver++", "ddpm"],
    "eta": [0.0, 1.0],
    "temperature": [0.5, 1.0],
    "top_k": [1, 8],
    "top_p": [0.5, 1.0],
    "truncation": [0.5, 1.0],
    "strength": [0.7, 1.0],
    "limit": [1, 5, 1000],
    "status": ["queued", "done", "cancelled", None],
    "wait": [0, 0.01],
    "download": [True, False],
}
# Values that break a field whatever its type says, by field name (on top of the type's own bad values).
BAD = {
    "prompt": ["", "   ", "x" * 201, "a\x00b", "\ud800"],
    "negative_prompt": ["x" * 201, "\x00"],
    "model": ["no-such-model", "../../etc/passwd", "SHAPES-DFGAN", ""],
    "models": [[], ["no-such-model"], ["shapes-dfgan", 5], "shapes-dfgan"],
    "seed": [-2, 2**62, 2**64],
    "num_images": [0, 5, 10**9],
    "steps": [0, 9, 10**6],
    "box": ["1,2,3", "a,b,c,d", "0,0,0,0", "nan,0,9,9", "0,0,9999,9999", "-5,0,9,9"],
    "sampler": ["euler", "DDIM", ""],
    "strength": [0, -0.5, 1.5],
}
UNKNOWN = ["stepz", "promt", "cfg", "Prompt", "image_url"]
NOT_JSON = [b"{", b'{"prompt": ', b"", b"[1, 2", b"\xff\xfe", b"null", b"[]", b'"a red circle"', b"5"]
NOT_IMAGES = [b"", b"not an image", b"GIF89a" + bytes(20), b"\x89PNG\r\n\x1a\n" + bytes(30)]
BAD_IDS = ["nope", "0" * 12, "x" * 300, "ü", " ", "%00", "1e3"]


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@dataclass
class Request:
    method: str
    route: str  # the route's path template, for the coverage count
    url: str
    options: dict = field(default_factory=dict)  # params, json, content, data, files, headers for the client
    bad: str | None = None  # the field this request breaks; None: meant to be valid
    expect: tuple = (200, 300)  # the status range of a valid answer


def schema_of(spec: dict, schema: dict) -> dict:
    """A body's schema with $ref and allOf resolved: {"properties", "required"}."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    properties, required = dict(schema.get("properties", {})), list(schema.get("required", []))
    for part in schema.get("allOf", []):
        inner = schema_of(spec, part)
        properties, required = {**inner["properties"], **properties}, required + inner["required"]
    return {"properties": properties, "required": required}


def arm(schema: dict) -> tuple[dict, bool]:
    """The non-null arm of an optional field, and whether null is allowed."""
    arms = schema.get("anyOf", [schema])
    return next((a for a in arms if a.get("type") != "null"), {}), any(a.get("type") == "null" for a in arms)


def is_file(schema: dict) -> bool:
    return bool(arm(schema)[0].get("contentMediaType"))


def typed_value(schema: dict, rng: random.Random):
    s, _ = arm(schema)
    if "enum" in s:
        return rng.choice(s["enum"])
    low, high = s.get("minimum", s.get("exclusiveMinimum", 0)), s.get("maximum", 1000)
    if s.get("type") == "integer":
        return rng.randint(int(low) + ("exclusiveMinimum" in s), int(min(high, low + 3)))
    if s.get("type") == "number":
        return rng.uniform(max(low, 0.01), min(high, low + 1))
    if s.get("type") == "boolean":
        return rng.choice([True, False])
    if s.get("type") == "array":
        return []
    return "x"


def typed_bad_values(schema: dict, form: bool) -> list:
    """Values that break a field of this type (as a form sends them: text, so a wrong JSON type is no test there)."""
    s, nullable = arm(schema)
    kind, bad = s.get("type"), []
    if kind in ("integer", "number"):
        # (a number as a JSON string, "3", is read as the number: pydantic's lax mode, FastAPI's default)
        bad += ["x", float("nan"), float("inf"), float("-inf"), "1e999"] + ([] if form else [[], {"a": 1}])
        if kind == "integer":
            bad += [1.5, 2**64, "0x10"]
        if "maximum" in s:
            bad += [s["maximum"] * 10 + 1, 1e308]
        if "minimum" in s or "exclusiveMinimum" in s:
            bad += [s.get("minimum", s.get("exclusiveMinimum", 0)) - 1, -1e308]
    elif kind == "boolean":
        bad += ["maybe", "2"] + ([] if form else [[], 5.5])
    elif kind == "string" and "enum" in s:
        bad += ["no-such-value"] + ([] if form else [5])
    elif kind == "string" and not form and s.get("contentMediaType") is None:
        bad += [5, 1.5, [], {"a": 1}, True]
    if not nullable and not form and kind is not None:
        bad.append(None)
    return bad


class Fuzz:
    """The request generator and its oracle, over one app."""

    def __init__(self, client: TestClient, rng: random.Random):
        self.client, self.rng = client, rng
        self.spec = client.app.openapi()
        self.models = {m["name"]: m for m in client.get("/api/models").json()}
        self.jobs: dict[str, dict] = {}  # every job accepted: id -> its last public record
        self.hits: dict[tuple[str, str], int] = {}
        self.answers = 0
        self.accepted: dict[tuple[str, str], int] = {}  # valid answers, by route
        self.routes = self._routes()

    def _routes(self) -> list[tuple[str, str]]:
        """Every (method, path) the app serves: its API routes, the page, the docs and the static files."""
        routes = []
        for route in self.client.app.routes:
            if isinstance(route, Mount):
                routes.append(("GET", route.path + "/{path}"))
            else:
                routes += [(m, route.path) for m in sorted(route.methods - {"HEAD"})]
        return routes

    # --- one request ----------------------------------------------------------------------------------------
    def request(self, method: str, route: str) -> Request:
        op = self.spec["paths"].get(route, {}).get(method.lower())
        if route.endswith("/{path}"):  # a static mount: its files, files it lacks, and paths out of it
            name = self.rng.choice(["app.js", "style.css", "index.html", "nope.js", "..%2Fapi.py", "%00", "a" * 300])
            ok = name in ("app.js", "style.css", "index.html")
            return Request(method, route, route.replace("{path}", name), bad=None if ok else "path",
                           expect=(200, 300) if ok else (404, 405))
        if op is None:  # the page and the docs: no parameters, junk query parameters ignored
            return Request(method, route, route, {"params": {"x": self.rng.choice(["1", "nan", "\x00", "é" * 50])}})
        request = Request(method, route, route)
        params = {p["name"]: p for p in op.get("parameters", [])}
        self._path_params(request, params)
        self._query_params(request, params)
        body = op.get("requestBody", {}).get("content", {})
        if "application/json" in body:
            self._json_body(request, schema_of(self.spec, body["application/json"]["schema"]))
        elif "multipart/form-data" in body:
            self._form_body(request, schema_of(self.spec, body["multipart/form-data"]["schema"]))
        return request

    def _break(self, request: Request, name: str) -> bool:
        """Whether to break field `name` in this request (at most one field a request)."""
        if request.bad is None and self.rng.random() < 0.35:
            request.bad = name
            return True
        return False

    def _path_params(self, request: Request, params: dict) -> None:
        job = self.rng.choice(list(self.jobs.values())) if self.jobs else None
        url = request.url
        if "job_id" in params:
            if job is None or self._break(request, "job_id"):
                request.bad, job = "job_id", None
                url = url.replace("{job_id}", self.rng.choice(BAD_IDS))
            else:
                url = url.replace("{job_id}", job["id"])
        if "k" in params:
            images = len(job["images"]) if job else 0
            if request.bad is not None:
                k = 0  # the id is the broken field
            elif images and self.rng.random() < 0.7:
                k = self.rng.randrange(images)
            else:
                request.bad, k = "k", self.rng.choice([-1, images, 99, "x", "1.5", 2**70])
            url = url.replace("{k}", str(k))
        for name in params:  # a path parameter of a new route: a value of its type
            if params[name]["in"] == "path" and "{" + name + "}" in url:
                url = url.replace("{" + name + "}", str(typed_value(params[name]["schema"], self.rng)))
        request.url = url

    def _query_params(self, request: Request, params: dict) -> None:
        query = {}
        for name, p in params.items():
            if p["in"] != "query" or self.rng.random() < 0.5:
                continue
            bad = typed_bad_values(p["schema"], form=True)
            if bad and self._break(request, name):
                query[name] = self.rng.choice(bad)
            else:
                query[name] = self.rng.choice(VALID[name]) if name in VALID else typed_value(p["schema"], self.rng)
            if query[name] is None:
                del query[name]
        if request.bad is None and self.rng.random() < 0.1:
            query[self.rng.choice(UNKNOWN)] = "1"  # an unknown query parameter is ignored, not refused
        request.options["params"] = query

    def _fields(self, request: Request, schema: dict, form: bool) -> dict:
        """A valid set of fields for the chosen model (model-aware for the known endpoints), then maybe one broken."""
        props, route = schema["properties"], request.route
        need = route.rsplit("/", 1)[1] if route in EDIT_ROUTES else None
        names = [m for m, info in self.models.items() if need is None or need in info["edits"]]
        model = self.rng.choice(names)
        values = {}
        if "model" in props:
            values["model"] = model
        if "models" in props:
            values["models"] = self.rng.choice([None, [model], sorted(self.models)[:2], sorted(self.models)])
        # Valid: the fields the chosen model takes (generate, edits) or every field (compare, a new endpoint's).
        allowed = set(props) if route not in ("/api/generate", *EDIT_ROUTES) else \
            set(self.models[model]["options"]) & (set(EDIT_FIELDS) if need else set(props)) | {"prompt"}
        for name, s in props.items():
            if name in values or name in ("strength", "box") or is_file(s) or name not in allowed:
                continue
            if name in schema["required"] or self.rng.random() < 0.5:
                values[name] = self.rng.choice(VALID[name]) if name in VALID else typed_value(s, self.rng)
        if need in ("inpaint", "img2img"):
            values.setdefault("prompt", self.rng.choice(VALID["prompt"]))  # optional in the form, needed by the edit
        if need == "img2img":
            values["strength"] = self.rng.choice(VALID["strength"])
        if need == "vary":
            values.pop("sampler", None), values.pop("negative_prompt", None)
        if values.get("seed") == 2**62 - 4 and values.get("num_images", 1) > 4:
            values["seed"] = 0
        # one field broken, or one unknown, or a required one missing
        if self.rng.random() < 0.55:
            choice = self.rng.random()
            if choice < 0.12:
                name = self.rng.choice(UNKNOWN)
                values[name], request.bad = 1, name
            elif choice < 0.2 and schema["required"]:
                name = self.rng.choice(schema["required"])
                if not is_file(props[name]):
                    values.pop(name, None)
                request.bad = name
            else:
                name = self.rng.choice([n for n, s in props.items() if not is_file(s)])
                pool = BAD.get(name, []) + typed_bad_values(props[name], form)
                if form:  # an empty form field is a field left out (FastAPI); a lone surrogate cannot be sent as text
                    pool = [v for v in pool if not (v == "" and arm(props[name])[1]) and v != "\ud800"]
                if need == "vary" and name == "prompt":
                    pool = [v for v in pool if str(v).strip()]  # a variation needs no caption
                if pool:
                    values[name], request.bad = self.rng.choice(pool), name
        return values

    def _json_body(self, request: Request, schema: dict) -> None:
        if self.rng.random() < 0.06:
            request.options["content"], request.bad = self.rng.choice(NOT_JSON), "body"
            request.options["headers"] = {"content-type": "application/json"}
            return
        values = self._fields(request, schema, form=False)
        request.options["content"] = json.dumps(values).encode()  # NaN and Infinity as Python's json writes them
        request.options["headers"] = {"content-type": "application/json"}

    def _form_body(self, request: Request, schema: dict) -> None:
        values = self._fields(request, schema, form=True)
        side = self.rng.choice([48, 64, 80])
        image = Image.new("RGB", (side, side), (240, 240, 240))
        image.paste((200, 30, 30), (8, 8, 30, 30))
        files = {"image": ("i.png", png(image, self.rng.choice(["PNG", "JPEG", "WEBP"])), "image/png")}
        if request.route == "/api/inpaint" and request.bad is None:
            if self.rng.random() < 0.5:
                values["box"] = "8,8,40,40"
            else:
                mask = Image.new("L", (side, side), 0)
                mask.paste(255, (8, 8, 40, 40))
                files["mask"] = ("m.png", png(mask), "image/png")
        if request.bad == "image" or (request.bad is None and self.rng.random() < 0.15):
            request.bad = "image"
            if self.rng.random() < 0.2:
                del files["image"]  # missing
            else:
                too_wide = png(Image.new("RGB", (5000, 1)))  # over the server's 4096 pixels a side
                files["image"] = ("i.png", self.rng.choice(NOT_IMAGES + [too_wide]), "image/png")
        elif request.route == "/api/inpaint" and request.bad is None and self.rng.random() < 0.15:
            request.bad = "mask"
            values.pop("box", None)
            black, other_size = png(Image.new("L", (side, side), 0)), png(Image.new("L", (side + 1, side), 255))
            files["mask"] = ("m.png", self.rng.choice(NOT_IMAGES + [black, other_size]), "image/png")
        elif request.bad is None and self.rng.random() < 0.03:
            values["mask"], request.bad = "x", "mask"  # a file field sent as text, the only mask
            values.pop("box", None), files.pop("mask", None)
        request.options["data"] = {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                                   for k, v in values.items() if v is not None}
        request.options["files"] = files

    # --- the oracle ---------------------------------------------------------------------------------------------
    def send(self, request: Request) -> None:
        key = (request.method, request.route)
        self.hits[key] = self.hits.get(key, 0) + 1
        answer = self.client.request(request.method, request.url, **request.options)
        self.answers += 1
        if 200 <= answer.status_code < 300:
            self.accepted[key] = self.accepted.get(key, 0) + 1
        case = (f"case {self.answers}: {request.method} {request.url} breaking {request.bad}, "
                f"{ {k: v for k, v in request.options.items() if k != 'files'} }"[:900]
                + f" -> {answer.status_code} {answer.text[:600]}")
        assert answer.status_code < 500, case
        if request.bad is not None:
            assert 400 <= answer.status_code < 500, case
            if request.route in self.spec["paths"]:  # an API route: the answer names the field, as the API promises
                names = [e["field"] for e in answer.json().get("errors", [])]
                assert any(n == request.bad or n.startswith(request.bad + ".") for n in names), case
            return
        if answer.status_code == 429:  # the queue is full: a valid request may be told to retry
            assert "queue" in answer.text and answer.headers["retry-after"].isdigit(), case
            return
        assert request.expect[0] <= answer.status_code < request.expect[1], case
        if request.route.endswith("/events"):
            assert answer.text.startswith("event: job"), case  # the job, then the stream ends with it
        if answer.status_code == 202:
            body = answer.json()
            for job in body.get("jobs", [body]):
                self.jobs[job["id"]] = job
                if job["model"] in SLOW:
                    cancelled = self.client.post(f"/api/jobs/{job['id']}/cancel")
                    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text

    def refresh(self) -> None:
        """Every job's record, after the queue has drained: no job is lost, and each ended done or cancelled."""
        for job_id in self.jobs:
            answer = self.client.get(f"/api/jobs/{job_id}")
            assert answer.status_code == 200, (job_id, answer.text)
            self.jobs[job_id] = answer.json()
            assert self.jobs[job_id]["status"] in ("done", "cancelled"), self.jobs[job_id]


def drain(manager, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while manager.queue or manager.running:
        assert time.monotonic() < deadline, "the queue did not drain"
        time.sleep(0.02)


@pytest.fixture
def fuzzed_server(tiny_ldm_dir, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the jobs are tiny: one thread is as fast, and steadier on a busy machine
    app, manager = build_app(["shapes-dfgan", str(tiny_ldm_dir), "shapes-unclip"], tmp_path / "out", queue_size=6,
                             max_batch_images=16, limits=LIMITS)
    with TestClient(app) as client:
        yield client, manager
    manager.close()
    torch.set_num_threads(threads)


def test_http_api_fuzz(fuzzed_server):
    client, manager = fuzzed_server
    fuzz = Fuzz(client, random.Random(SEED + 10))
    writes = [(m, p) for m, p in fuzz.routes if m != "GET"]
    reads = [(m, p) for m, p in fuzz.routes if m == "GET"]
    total = int(1000 * SCALE)
    while fuzz.answers < total:
        # Submitting, with the worker paused: every answer depends on the requests alone. No event stream here:
        # a queued job's stream lasts until the job ends.
        with manager.paused():
            for _ in range(ROUND // 2):  # mostly submissions: the checks worth fuzzing are theirs
                pool = writes if fuzz.rng.random() < 0.7 else [r for r in reads if not r[1].endswith("/events")]
                method, route = fuzz.rng.choice(pool)
                fuzz.send(fuzz.request(method, route))
        drain(manager)
        fuzz.refresh()
        # Reading: every job has ended, so every stream ends too.
        for _ in range(ROUND // 2):
            method, route = fuzz.rng.choice(reads + [r for r in writes if r[1].endswith("/cancel")])
            fuzz.send(fuzz.request(method, route))
    missing = [r for r in fuzz.routes if fuzz.hits.get(r, 0) < 5]
    assert not missing, f"routes the fuzz did not reach (at least 5 requests each): {missing}"
    refused = [r for r in fuzz.routes if not fuzz.accepted.get(r)]
    assert not refused, f"routes that answered no request 2xx: the fuzz's valid requests are not valid there: {refused}"
    drain(manager)
    fuzz.refresh()
    listed = {j["id"] for j in client.get("/api/jobs", params={"limit": 1000}).json()}  # the newest 1,000
    assert set(list(fuzz.jobs)[-1000:]) <= listed, "a job accepted is missing from the gallery"
    done = sum(j["status"] == "done" for j in fuzz.jobs.values())
    assert done >= 30 * min(SCALE, 1), f"only {done} jobs drew: the fuzz barely exercised the worker"
