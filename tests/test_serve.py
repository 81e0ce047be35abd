"""`trilemma serve`'s HTTP API, as a client uses it: every endpoint, and every kind of bad input answered 4xx with
one line per bad field (never a 500, never a queued job that fails later). The shipped models draw; each is fast on
a CPU (a GAN, a latent diffusion model at a few steps, the autoregressive model, unCLIP for variations)."""

from __future__ import annotations

import io
import json
import time
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import trilemma
from trilemma.serve import build_app, resolve_models
from trilemma.serve.api import Limits

MODELS = ["shapes-dfgan", "shapes-ldm-f8", "shapes-ldm-f8-inpaint", "shapes-dalle", "shapes-unclip"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    app, manager = build_app(MODELS, tmp_path_factory.mktemp("serve"), queue_size=16, max_batch_images=32,
                             limits=Limits(max_images=8, max_steps=200))
    with TestClient(app) as client:
        yield client, manager
    manager.close()


@pytest.fixture(scope="module")
def client(served):
    return served[0]


def finished(client, job: dict, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job['id']}", params={"wait": 30}).json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
    raise AssertionError(f"job {job['id']} did not finish in {timeout} s")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def assert_same_image(served: bytes, alone: Image.Image, what) -> None:
    """The served image is its own request's, drawn in a batch: the same noise and prompt as alone. Computing a
    batch of several may round a pixel one grey level apart from a batch of one (measured: at most 1, in one pixel of
    12,288); another request's image differs by about 30 grey levels on average."""
    diff = np.abs(pixels(served).astype(float) - np.asarray(alone, dtype=float))
    assert diff.max() <= 2 and diff.mean() < 0.05, (what, diff.max(), diff.mean())


def scene(size=64) -> Image.Image:
    from trilemma.shapes.scenes import render, sample_scene

    return render(sample_scene("test", 6, 0), size)


# --- reading -------------------------------------------------------------------------------------------------------
def test_health_and_models_list_options_edits_and_scores(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["auth"] is False and health["limits"]["max_images"] == 8
    assert health["default_model"] == "shapes-dfgan"  # the library's default (shapes-imagen) is not served: the first
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert list(models) == MODELS
    assert models["shapes-dfgan"]["family"] == "gan" and "truncation" in models["shapes-dfgan"]["options"]
    assert "steps" not in models["shapes-dfgan"]["options"]
    assert {"steps", "guidance_scale", "sampler", "negative_prompt"} <= set(models["shapes-ldm-f8"]["options"])
    assert "temperature" in models["shapes-dalle"]["options"]
    assert models["shapes-ldm-f8-inpaint"]["edits"] == ["inpaint", "img2img"]
    assert "vary" in models["shapes-unclip"]["edits"] and models["shapes-dalle"]["edits"] == []
    assert 0 < models["shapes-ldm-f8"]["scores"]["test"] < 1  # from its scores.json


def test_openapi_documents_every_endpoint(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/health", "/api/models", "/api/generate", "/api/compare", "/api/inpaint", "/api/img2img",
                 "/api/vary", "/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/events",
                 "/api/jobs/{job_id}/images/{k}", "/api/jobs/{job_id}/images", "/api/jobs/{job_id}/cancel"):
        assert path in paths, path


def test_the_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="prompt"' in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200


# --- generating ----------------------------------------------------------------------------------------------------
def test_generate_draws_what_the_python_api_draws_and_the_png_carries_its_parameters(client):
    body = {"prompt": "a red circle above a blue square", "model": "shapes-ldm-f8", "seed": 11, "num_images": 2,
            "steps": 8, "guidance_scale": 3.0, "sampler": "ddim", "negative_prompt": "green"}
    r = client.post("/api/generate", json=body)
    assert r.status_code == 202 and r.headers["location"] == f"/api/jobs/{r.json()['id']}"
    job = finished(client, r.json())
    assert job["status"] == "done" and len(job["images"]) == 2 and job["seconds_per_image"] > 0
    expected = trilemma.load("shapes-ldm-f8").generate([body["prompt"]] * 2, seed=11, steps=8, guidance_scale=3.0,
                                                        sampler="ddim", negative_prompt="green")
    for k, url in enumerate(job["images"]):
        data = client.get(url)
        assert data.headers["content-type"] == "image/png"
        assert np.array_equal(pixels(data.content), np.asarray(expected[k]))  # image k has seed 11 + k, as the CLI
        text = Image.open(io.BytesIO(data.content)).text
        assert text["parameters"].splitlines()[0] == body["prompt"]
        assert "Negative prompt: green" in text["parameters"]
        assert f"Steps: 8, Sampler: ddim, CFG scale: 3.0, Seed: {11 + k}, Size: 64x64, Model: shapes-ldm-f8" in text["parameters"]
        assert json.loads(text["trilemma"])["seed"] == 11 + k
    download = client.get(job["images"][0], params={"download": True})
    assert "attachment" in download.headers["content-disposition"]
    b64 = client.get(f"/api/jobs/{job['id']}/images").json()
    assert len(b64["images"]) == 2 and np.array_equal(pixels(__import__("base64").b64decode(b64["images"][1])), np.asarray(expected[1]))


def test_random_seed_is_drawn_and_reported(client):
    job = finished(client, client.post("/api/generate", json={"prompt": "a blue square", "model": "shapes-dfgan",
                                                              "seed": -1}).json())
    assert job["status"] == "done" and 0 <= job["params"]["seed"] < 2**32
    again = trilemma.load("shapes-dfgan").generate(["a blue square"], seed=job["params"]["seed"])[0]
    assert np.array_equal(pixels(client.get(job["images"][0]).content), np.asarray(again))


def test_waiting_requests_share_a_forward_pass_and_each_gets_its_own_images(served):
    client, manager = served
    asks = [("a red circle", 3, 2), ("two green squares", 40, 1), ("a yellow triangle below a blue circle", 7, 3)]
    with manager.paused():  # the three meet in the queue, as under load
        jobs = [client.post("/api/generate", json={"prompt": p, "model": "shapes-dfgan", "seed": s, "num_images": n}).json()
                for p, s, n in asks]
    done = [finished(client, j) for j in jobs]
    assert all(j["status"] == "done" for j in done)
    assert [j["batch_images"] for j in done] == [6, 6, 6]  # the three waited together: one pass of 2 + 1 + 3 images
    model = trilemma.load("shapes-dfgan")
    for (prompt, seed, n), job in zip(asks, done):
        alone = model.generate([prompt] * n, seed=seed)
        for k in range(n):
            assert_same_image(client.get(job["images"][k]).content, alone[k], (prompt, k))


def test_batched_diffusion_images_are_their_requests_own(served):
    client, manager = served
    asks = [("a red circle", 5), ("two green squares", 9), ("a blue triangle", 2)]
    with manager.paused():
        jobs = [client.post("/api/generate", json={"prompt": p, "model": "shapes-ldm-f8", "seed": s, "steps": 6}).json()
                for p, s in asks]
    done = [finished(client, j) for j in jobs]
    assert [j["batch_images"] for j in done] == [3, 3, 3]
    model = trilemma.load("shapes-ldm-f8")
    for (prompt, seed), job in zip(asks, done):
        alone = model.generate([prompt], seed=seed, steps=6)[0]
        assert_same_image(client.get(job["images"][0]).content, alone, prompt)


def test_requests_with_other_options_are_not_batched_together(served):
    client, manager = served
    with manager.paused():
        a = client.post("/api/generate", json={"prompt": "a red circle", "model": "shapes-ldm-f8", "steps": 4}).json()
        b = client.post("/api/generate", json={"prompt": "a red circle", "model": "shapes-ldm-f8", "steps": 5}).json()
        c = client.post("/api/generate", json={"prompt": "a red circle", "model": "shapes-dfgan"}).json()
    assert [finished(client, j)["batch_images"] for j in (a, b, c)] == [1, 1, 1]


def test_a_job_that_fails_in_the_worker_fails_alone_and_the_worker_goes_on(served):
    from trilemma.serve.jobs import Job

    client, manager = served
    with manager.paused():  # a job the API would have refused, put straight in the queue between two good ones
        good = client.post("/api/generate", json={"prompt": "a red circle", "model": "shapes-dfgan", "seed": 1}).json()
        bad = manager.submit([Job("generate", "shapes-dfgan", {"prompt": " ", "seed": 2, "num_images": 1})])[0]
        other = client.post("/api/generate", json={"prompt": "a blue circle", "model": "shapes-dfgan", "seed": 3}).json()
    assert finished(client, good)["status"] == "done" and finished(client, other)["status"] == "done"
    failed = finished(client, {"id": bad.id})
    assert failed["status"] == "failed" and "prompt" in failed["error"]
    outdir = manager.outdir
    manager.outdir = outdir / "missing" / "folder"  # writing the PNG fails after the model has drawn
    try:
        broken = finished(client, client.post("/api/generate", json={"prompt": "a red circle", "model": "shapes-dfgan"}).json())
    finally:
        manager.outdir = outdir
    assert broken["status"] == "failed" and "internal error" in broken["error"]
    assert finished(client, client.post("/api/generate", json={"prompt": "a red circle", "model": "shapes-dfgan"}).json())["status"] == "done"


def test_cancel_one_job_of_a_shared_forward_pass(served):
    client, manager = served
    with manager.paused():
        keep = client.post("/api/generate", json={"prompt": "a red circle", "model": "shapes-ldm-f8", "steps": 120}).json()
        drop = client.post("/api/generate", json={"prompt": "a blue square", "model": "shapes-ldm-f8", "steps": 120}).json()
    for _ in range(200):
        if client.get(f"/api/jobs/{drop['id']}").json()["status"] == "running":
            break
        time.sleep(0.02)
    client.post(f"/api/jobs/{drop['id']}/cancel")
    kept, dropped = finished(client, keep), finished(client, drop)
    assert kept["status"] == "done" and kept["batch_images"] == 2 and len(kept["images"]) == 1
    assert dropped["status"] == "cancelled" and dropped["images"] == []


def test_events_stream_progress_and_a_preview(client):
    job = client.post("/api/generate", json={"prompt": "a cyan circle", "model": "shapes-ldm-f8", "steps": 40}).json()
    events = []
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    jobs = [data for name, data in events if name == "job"]
    steps = [j["progress"]["step"] for j in jobs if j["progress"]]
    assert jobs[-1]["status"] == "done" and steps == sorted(steps) and steps[-1] == 40 and len(set(steps)) > 3
    previews = [data for name, data in events if name == "preview"]
    assert previews and Image.open(io.BytesIO(__import__("base64").b64decode(previews[0]["png"]))).size == (64, 64)


def test_autoregressive_progress_counts_tokens(client):
    job = finished(client, client.post("/api/generate", json={"prompt": "a red square", "model": "shapes-dalle",
                                                              "temperature": 0.9}).json())
    assert job["status"] == "done" and job["progress"]["desc"] == "tokens" and job["progress"]["step"] == job["progress"]["total"]


def test_cancel_a_queued_job_and_a_running_one(client):
    running = client.post("/api/generate", json={"prompt": "a red circle", "model": "shapes-ldm-f8", "steps": 200,
                                                 "sampler": "ddim", "num_images": 8}).json()
    queued = client.post("/api/generate", json={"prompt": "a blue circle", "model": "shapes-ldm-f8", "steps": 7}).json()
    assert client.post(f"/api/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
    for _ in range(200):  # wait until it runs, then stop it mid-way
        if client.get(f"/api/jobs/{running['id']}").json()["progress"].get("step", 0) >= 2:
            break
        time.sleep(0.05)
    client.post(f"/api/jobs/{running['id']}/cancel")
    job = finished(client, running)
    assert job["status"] == "cancelled" and job["images"] == [] and job["progress"]["step"] < 200


def test_compare_draws_one_prompt_and_seed_on_every_model(client):
    r = client.post("/api/compare", json={"prompt": "two green squares", "seed": 5})
    assert r.status_code == 202
    group = r.json()
    assert [j["model"] for j in group["jobs"]] == MODELS
    done = [finished(client, j) for j in group["jobs"]]
    assert all(j["status"] == "done" and j["params"]["seed"] == 5 and j["seconds_per_image"] > 0 for j in done)
    # each model ran with its own defaults, and the job and its PNG say which
    defaults = {m["name"]: m["defaults"] for m in client.get("/api/models").json()}
    ldm = next(j for j in done if j["model"] == "shapes-ldm-f8")
    assert ldm["params"]["steps"] == defaults["shapes-ldm-f8"]["steps"] and ldm["params"]["sampler"] == defaults["shapes-ldm-f8"]["sampler"]
    text = Image.open(io.BytesIO(client.get(ldm["images"][0]).content)).text["parameters"]
    assert f"Steps: {defaults['shapes-ldm-f8']['steps']}, Sampler: {defaults['shapes-ldm-f8']['sampler']}" in text
    listed = client.get("/api/jobs", params={"group": group["group"]}).json()
    assert {j["id"] for j in listed} == {j["id"] for j in done}


def test_gallery_lists_jobs_newest_first(client):
    job = finished(client, client.post("/api/generate", json={"prompt": "a gallery circle", "model": "shapes-dfgan"}).json())
    listed = client.get("/api/jobs", params={"limit": 5}).json()
    assert listed[0]["id"] == job["id"] and listed[0]["params"]["prompt"] == "a gallery circle"
    assert len(listed) <= 5
    assert client.get("/api/jobs", params={"status": "done", "limit": 1000}).json()[0]["status"] == "done"


# --- editing -------------------------------------------------------------------------------------------------------
def test_inpaint_with_a_mask_and_with_a_box(client):
    image = png(scene())
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 44, 44))
    by_mask = client.post("/api/inpaint", data={"prompt": "a red circle", "seed": 2, "num_images": 2, "steps": 8},
                          files={"image": ("s.png", image, "image/png"), "mask": ("m.png", png(mask), "image/png")})
    by_box = client.post("/api/inpaint", data={"prompt": "a red circle", "seed": 2, "num_images": 2, "steps": 8,
                                                "box": "20,20,44,44"}, files={"image": ("s.png", image, "image/png")})
    assert by_mask.status_code == by_box.status_code == 202
    a, b = finished(client, by_mask.json()), finished(client, by_box.json())
    assert a["model"] == "shapes-ldm-f8-inpaint" and a["kind"] == "inpaint" and len(a["images"]) == 2
    expected = trilemma.load("shapes-ldm-f8-inpaint").inpaint(["a red circle"] * 2, scene(), mask, seed=2, steps=8)
    for k in range(2):
        assert np.array_equal(pixels(client.get(a["images"][k]).content), np.asarray(expected[k]))
        assert np.array_equal(pixels(client.get(b["images"][k]).content), np.asarray(expected[k]))


def test_img2img_and_variations(client):
    image = png(scene())
    job = finished(client, client.post("/api/img2img", data={"prompt": "a green square", "model": "shapes-ldm-f8",
                                                             "strength": 0.5, "steps": 10, "seed": 4},
                                       files={"image": ("s.png", image, "image/png")}).json())
    assert job["status"] == "done" and job["params"]["strength"] == 0.5
    expected = trilemma.load("shapes-ldm-f8").generate(["a green square"], seed=4, init_image=scene(), strength=0.5, steps=10)
    assert np.array_equal(pixels(client.get(job["images"][0]).content), np.asarray(expected[0]))
    vary = finished(client, client.post("/api/vary", data={"num_images": 2, "steps": 6, "seed": 1},
                                        files={"image": ("s.jpg", image, "image/png")}).json())
    assert vary["status"] == "done" and vary["model"] == "shapes-unclip" and len(vary["images"]) == 2


# --- bad input -----------------------------------------------------------------------------------------------------
GENERATE_BAD = [
    ({"model": "shapes-dfgan"}, 422, ["prompt"]),
    ({"prompt": "  ", "model": "shapes-dfgan"}, 422, ["prompt"]),
    ({"prompt": "x" * 501}, 422, ["prompt"]),
    ({"prompt": "a red circle", "negative_prompt": "y" * 501, "model": "shapes-ldm-f8"}, 422, ["negative_prompt"]),
    ({"prompt": "a red circle", "model": "no-such-model"}, 422, ["model"]),
    ({"prompt": "a red circle", "model": "/etc/passwd"}, 422, ["model"]),
    ({"prompt": "a red circle", "num_images": 9}, 422, ["num_images"]),
    ({"prompt": "a red circle", "num_images": 0}, 422, ["num_images"]),
    ({"prompt": "a red circle", "model": "shapes-ldm-f8", "steps": 201}, 422, ["steps"]),
    ({"prompt": "a red circle", "model": "shapes-ldm-f8", "steps": 0}, 422, ["steps"]),
    ({"prompt": "a red circle", "model": "shapes-ldm-f8", "steps": "many"}, 422, ["steps"]),
    ({"prompt": "a red circle", "model": "shapes-ldm-f8", "guidance_scale": -1}, 422, ["guidance_scale"]),
    ({"prompt": "a red circle", "model": "shapes-ldm-f8", "guidance_scale": float("nan")}, 422, ["guidance_scale"]),
    ({"prompt": "a red circle", "model": "shapes-ldm-f8", "sampler": "euler"}, 422, ["sampler"]),
    ({"prompt": "a red circle", "model": "shapes-dfgan", "steps": 10}, 422, ["steps"]),
    ({"prompt": "a red circle", "model": "shapes-dfgan", "negative_prompt": "blue"}, 422, ["negative_prompt"]),
    ({"prompt": "a red circle", "model": "shapes-ldm-f8", "temperature": 0.5}, 422, ["temperature"]),
    ({"prompt": "a red circle", "seed": -2}, 422, ["seed"]),
    ({"prompt": "a red circle", "seed": 2**63}, 422, ["seed"]),
    ({"prompt": "a red circle", "seed": 1.5}, 422, ["seed"]),
    ({"prompt": "a red circle", "model": "shapes-dalle", "top_p": 0}, 422, ["top_p"]),
    ({"prompt": "a red circle", "color": "red"}, 422, ["color"]),
    ({"prompt": 7}, 422, ["prompt"]),
    ({"prompt": "a\x00b"}, 422, ["prompt"]),
    ({"prompt": "a red circle", "model": "shapes-dfgan", "seed": 2**62 - 1, "num_images": 2}, 422, ["seed"]),
    ({"prompt": "", "model": "shapes-ldm-f8", "steps": 999}, 422, ["prompt", "steps"]),  # every bad field, one line each
]


@pytest.mark.parametrize("body,status,fields", GENERATE_BAD)
def test_bad_generate_requests_get_one_line_per_field(client, body, status, fields):
    before = len(client.get("/api/jobs", params={"limit": 1000}).json())
    if isinstance(body.get("guidance_scale"), float) and body["guidance_scale"] != body["guidance_scale"]:
        r = client.post("/api/generate", content=json.dumps(body), headers={"content-type": "application/json"})
    else:
        r = client.post("/api/generate", json=body)
    assert r.status_code == status, r.text
    errors = r.json()["errors"]
    assert [e["field"] for e in errors] == fields, errors
    assert all(e["message"] and "\n" not in e["message"] for e in errors)
    assert len(client.get("/api/jobs", params={"limit": 1000}).json()) == before  # nothing was queued


def test_text_that_is_not_unicode_is_refused(client):
    r = client.post("/api/generate", content='{"prompt": "a red \\ud800 circle"}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "prompt"


def test_a_mask_that_vanishes_at_the_models_side_is_refused(client):
    big = png(Image.new("RGB", (1024, 1024), "white"))
    r = client.post("/api/inpaint", data={"prompt": "a red circle", "box": "0,0,3,3"}, files={"image": ("b.png", big, "image/png")})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "box" and "vanishes" in r.json()["errors"][0]["message"]


def test_oversized_bodies_and_posts_from_other_sites_are_refused(client):
    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"x" * 2**20
    r = client.post("/api/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/api/generate", json={"prompt": "a red circle"}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "origin"


def test_malformed_json_and_unknown_jobs(client):
    r = client.post("/api/generate", content="{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"
    assert client.post("/api/generate", content="[]", headers={"content-type": "application/json"}).status_code == 422
    for path in ("/api/jobs/nope", "/api/jobs/nope/events", "/api/jobs/nope/images/0", "/api/jobs/nope/images"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["errors"][0]["field"] == "job_id", path
    assert client.post("/api/jobs/nope/cancel").status_code == 404
    job = finished(client, client.post("/api/generate", json={"prompt": "a red circle", "model": "shapes-dfgan"}).json())
    assert client.get(f"/api/jobs/{job['id']}/images/1").status_code == 404
    assert client.get(f"/api/jobs/{job['id']}/images/-1").status_code == 404
    assert client.get(f"/api/jobs/{job['id']}", params={"wait": 61}).status_code == 422
    assert client.get("/api/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/api/jobs", params={"status": "lost"}).status_code == 422


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


EDIT_BAD = [
    ("inpaint", {"prompt": "a red circle"}, {"image": "scene"}, 422, ["mask"]),
    ("inpaint", {"prompt": "a red circle", "box": "1,2,3"}, {"image": "scene"}, 422, ["box"]),
    ("inpaint", {"prompt": "a red circle", "box": "0,0,99,10"}, {"image": "scene"}, 422, ["box"]),
    ("inpaint", {"prompt": "a red circle"}, {"image": "scene", "mask": "black"}, 422, ["mask"]),
    ("inpaint", {"prompt": "a red circle"}, {"image": "scene", "mask": "small"}, 422, ["mask"]),
    ("inpaint", {"prompt": "", "box": "0,0,9,9"}, {"image": "scene"}, 422, ["prompt"]),
    ("inpaint", {"prompt": "a red circle", "box": "0,0,9,9", "model": "shapes-dfgan"}, {"image": "scene"}, 422, ["model"]),
    ("inpaint", {"prompt": "a red circle", "box": "0,0,9,9", "strength": 0.5}, {"image": "scene"}, 422, ["strength"]),
    ("inpaint", {"prompt": "a red circle", "box": "0,0,9,9", "num_images": 20}, {"image": "scene"}, 422, ["num_images"]),
    ("inpaint", {"prompt": "a red circle", "box": "0,0,9,9"}, {}, 422, ["image"]),
    ("inpaint", {"prompt": "a red circle", "box": "0,0,9,9"}, {"image": "gif"}, 415, ["image"]),
    ("inpaint", {"prompt": "a red circle", "box": "0,0,9,9"}, {"image": "text"}, 415, ["image"]),
    ("inpaint", {"prompt": "a red circle", "box": "0,0,9,9"}, {"image": "empty"}, 422, ["image"]),
    ("inpaint", {"prompt": "a red circle", "box": "0,0,9,9"}, {"image": "huge"}, 413, ["image"]),
    ("inpaint", {"prompt": "a red circle", "box": "0,0,9,9"}, {"image": "wide"}, 422, ["image"]),
    ("inpaint", {"prompt": "a red circle", "box": "0,0,9,9", "extra": "1"}, {"image": "scene"}, 422, ["extra"]),
    ("img2img", {"prompt": "a red circle", "model": "shapes-ldm-f8", "strength": 0}, {"image": "scene"}, 422, ["strength"]),
    ("img2img", {"prompt": "a red circle", "model": "shapes-ldm-f8", "strength": 1.5}, {"image": "scene"}, 422, ["strength"]),
    ("img2img", {"prompt": "a red circle", "model": "shapes-ldm-f8", "strength": 0.05, "steps": 4}, {"image": "scene"}, 422, ["strength"]),
    ("img2img", {"prompt": "a red circle", "model": "shapes-dalle"}, {"image": "scene"}, 422, ["model"]),
    ("img2img", {"prompt": "a red circle", "box": "0,0,9,9"}, {"image": "scene"}, 422, ["box"]),
    ("vary", {"model": "shapes-ldm-f8"}, {"image": "scene"}, 422, ["model"]),
    ("vary", {"sampler": "ddim"}, {"image": "scene"}, 422, ["sampler"]),
    ("vary", {"seed": "x"}, {"image": "scene"}, 422, ["seed"]),
]


def _upload(kind: str):
    if kind == "scene":
        return ("s.png", png(scene()), "image/png")
    if kind == "black":
        return ("m.png", png(Image.new("L", (64, 64), 0)), "image/png")
    if kind == "small":
        return ("m.png", png(Image.new("L", (32, 32), 255)), "image/png")
    if kind == "gif":
        return ("a.gif", _gif(), "image/gif")
    if kind == "text":
        return ("a.png", b"not an image at all", "image/png")
    if kind == "empty":
        return ("a.png", b"", "image/png")
    if kind == "huge":
        return ("a.png", b"\x89PNG" + bytes(9 * 2**20), "image/png")
    if kind == "wide":
        return ("a.png", png(Image.new("RGB", (5000, 2), "white")), "image/png")
    raise KeyError(kind)


@pytest.mark.parametrize("endpoint,data,files,status,fields", EDIT_BAD)
def test_bad_edit_requests_get_one_line_per_field(client, endpoint, data, files, status, fields):
    r = client.post(f"/api/{endpoint}", data=data, files={k: _upload(v) for k, v in files.items()})
    assert r.status_code == status, r.text
    assert [e["field"] for e in r.json()["errors"]] == fields, r.json()


COMPARE_BAD = [
    ({"prompt": ""}, ["prompt"]),
    ({"prompt": "a red circle", "models": ["shapes-dfgan", "ghost"]}, ["models.1"]),
    ({"prompt": "a red circle", "seed": "zero"}, ["seed"]),
    ({"prompt": "a red circle", "steps": 3}, ["steps"]),
]


@pytest.mark.parametrize("body,fields", COMPARE_BAD)
def test_bad_compare_requests(client, body, fields):
    r = client.post("/api/compare", json=body)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == fields


# --- limits and safety ---------------------------------------------------------------------------------------------
@contextmanager
def own_server(tmp_path, models=("shapes-dfgan",), **options):
    """A server of its own (other caps or a key than the shared one), closed after."""
    app, manager = build_app(list(models), tmp_path, **options)
    try:
        with TestClient(app) as client:
            yield client
    finally:
        manager.close()


def test_a_full_queue_answers_429_with_retry_after(tmp_path):
    with own_server(tmp_path, ["shapes-ldm-f8"], queue_size=2) as client:
        slow = {"prompt": "a red circle", "steps": 200, "sampler": "ddim", "num_images": 8}
        first = client.post("/api/generate", json=slow).json()
        for _ in range(100):  # the first one runs: the queue is empty again
            if client.get(f"/api/jobs/{first['id']}").json()["status"] == "running":
                break
            time.sleep(0.05)
        codes = [client.post("/api/generate", json={**slow, "steps": 199 - i}).status_code for i in range(3)]
        assert codes == [202, 202, 429]
        full = client.post("/api/generate", json=slow)
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        assert full.json()["errors"][0]["field"] == "queue"
        r = client.post("/api/compare", json={"prompt": "a red circle", "models": ["shapes-ldm-f8"] * 3})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "models"  # could never fit: not a 429
        for job in client.get("/api/jobs").json():
            client.post(f"/api/jobs/{job['id']}/cancel")


def test_api_key(tmp_path):
    with own_server(tmp_path, api_key="s3cret") as client:
        assert client.get("/api/health").json()["auth"] is True  # the page asks for the key when told
        assert client.get("/").status_code == 200
        assert client.get("/api/models").status_code == 401
        assert client.get("/api/models", headers={"X-API-Key": "wrong"}).status_code == 401
        r = client.post("/api/generate", json={"prompt": "a red circle"})
        assert r.status_code == 401 and r.json()["errors"][0]["field"] == "api_key"
        assert client.get("/api/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/api/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        job = client.post("/api/generate", json={"prompt": "a red circle"}, headers={"X-API-Key": "s3cret"}).json()
        done = client.get(f"/api/jobs/{job['id']}", params={"wait": 30, "api_key": "s3cret"}).json()
        assert client.get(done["images"][0]).status_code == 401
        assert client.get(done["images"][0], params={"api_key": "s3cret"}).status_code == 200  # what <img> tags use


def test_a_request_without_a_model_uses_the_librarys_default(tmp_path):
    with own_server(tmp_path, ["shapes-dfgan", "shapes-imagen"]) as client:  # served second, still the default
        assert client.get("/api/health").json()["default_model"] == "shapes-imagen"
        job = client.post("/api/generate", json={"prompt": "a red circle", "steps": 4}).json()
        assert job["model"] == "shapes-imagen"
        client.post(f"/api/jobs/{job['id']}/cancel")


def test_an_empty_key_is_no_key(tmp_path):
    with own_server(tmp_path, api_key="") as client:
        assert client.get("/api/health").json()["auth"] is False


def test_only_models_given_at_start_are_served(tmp_path):
    assert list(resolve_models(["shapes-dfgan"])) == ["shapes-dfgan"]
    from trilemma.registry import shipped_models

    mine = tmp_path / "mine"
    trilemma.load("shapes-dfgan").save_pretrained(mine)
    both = resolve_models(["all", str(mine)])
    assert list(both) == list(shipped_models()) + ["mine"] and both["mine"] == mine
    with pytest.raises(ValueError, match="neither a shipped model"):
        resolve_models([str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="does not draw images from text"):
        resolve_models(["trilemma/weights/shapes-clip"])


def test_cli_refuses_bad_models_with_one_line(tmp_path, capsys):
    from trilemma.cli import main

    assert main(["serve", "--models", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a shipped model" in err


def test_the_command_starts_a_server_on_loopback(tmp_path):
    """`trilemma serve` as the README runs it: it answers on 127.0.0.1, and only to loopback host names there."""
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "trilemma", "serve", "--models", "shapes-dfgan", "--port", str(port),
                               "--outdir", str(tmp_path / "out")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                health = httpx.get(base + "/api/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError("the server did not start")
        assert health.json()["status"] == "ok"
        job = httpx.post(base + "/api/generate", json={"prompt": "a red circle", "seed": 3}).json()
        done = httpx.get(f"{base}/api/jobs/{job['id']}", params={"wait": 30}, timeout=40).json()
        assert done["status"] == "done" and (tmp_path / "out" / f"{job['id']}-0.png").is_file()
        assert httpx.get(base + "/api/health", headers={"host": "evil.example"}).status_code == 400  # no DNS rebinding
    finally:
        server.terminate()
        server.wait(timeout=30)
