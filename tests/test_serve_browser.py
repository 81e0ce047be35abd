"""The page, used as a person uses it, in a real headless Chromium (Debian's `chromium`, driven by Playwright):
type a prompt and generate, watch the images arrive, find them in the gallery and reuse their parameters, compare
the three families on one prompt, draw a mask and inpaint, and see a bad value refused with the field named.

`.ci/run` installs chromium and sets TRILEMMA_REQUIRE_BROWSER=1, so in CI a missing browser fails instead of
skipping. TRILEMMA_SCREENSHOT_DIR keeps the screenshots (docs/serve.png is one of them)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("TRILEMMA_REQUIRE_BROWSER"):
        raise RuntimeError("TRILEMMA_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
    pytest.skip("no chromium here (apt-get install chromium); CI installs it", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

MODELS = ["shapes-ldm-f8", "shapes-ldm-f8-inpaint", "shapes-dalle", "shapes-dfgan"]
# The flags the machine's probe found necessary: no sandbox as root, and no background connections on a closed network.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    import uvicorn

    from trilemma.serve import build_app

    app, manager = build_app(MODELS, tmp_path_factory.mktemp("serve-browser"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    manager.close()


@pytest.fixture(scope="module")
def page(server_url):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server_url)
        expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=30_000)
        yield page
        browser.close()


def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("TRILEMMA_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def generate(page, prompt: str, model: str, n: int, steps: str = "", sampler: str = "") -> None:
    """Fill the Generate form as a person would, and press Generate."""
    page.click("#tabs button[data-tab=generate]")
    page.select_option("#model", model)
    page.fill("#prompt", prompt)
    page.fill("#num-images", str(n))
    page.fill("#steps", steps)
    page.select_option("#sampler", sampler)
    page.click("#generate")


def test_generate_then_gallery_then_reuse(page, tmp_path):
    generate(page, "a red circle to the left of a blue square", "shapes-ldm-f8", 4, steps="20")
    expect(page.locator("#progress-text")).to_contain_text("done in", timeout=60_000)
    images = page.locator("#results img")
    expect(images).to_have_count(4)
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth === 64)")
    page.screenshot(path=str(shots(tmp_path) / "serve.png"))
    # the gallery has the job, with its parameters; "reuse" puts them back in the form
    page.click("#tabs button[data-tab=gallery]")
    card = page.locator(".gallery-card").first
    expect(card.locator(".prompt")).to_have_text("a red circle to the left of a blue square")
    expect(card.locator(".meta")).to_contain_text("20 steps")
    page.evaluate("document.getElementById('prompt').value = ''")  # so that reuse must fill it
    card.locator("button", has_text="reuse").click()
    expect(page.locator("#tab-generate")).to_be_visible()
    expect(page.locator("#prompt")).to_have_value("a red circle to the left of a blue square")
    expect(page.locator("#steps")).to_have_value("20")


def test_live_progress_preview_and_cancel(page):
    generate(page, "three purple circles", "shapes-ldm-f8", 8, steps="200", sampler="ddim")
    expect(page.locator("#progress-text")).to_contain_text("denoising", timeout=30_000)
    expect(page.locator("#preview")).to_be_visible(timeout=30_000)  # the current sample, decoded, while it runs
    assert page.locator("#preview").evaluate("img => img.naturalWidth") == 64
    page.click("#cancel")
    expect(page.locator("#progress-text")).to_contain_text("cancelled", timeout=30_000)
    expect(page.locator("#results img")).to_have_count(0)


def test_options_follow_the_model(page):
    page.click("#tabs button[data-tab=generate]")
    page.select_option("#model", "shapes-dfgan")
    expect(page.locator("[data-option=steps]")).to_be_hidden()
    expect(page.locator("[data-option=truncation]")).to_be_visible()
    page.select_option("#model", "shapes-dalle")
    expect(page.locator("[data-option=temperature]")).to_be_visible()
    page.select_option("#model", "shapes-ldm-f8")
    expect(page.locator("[data-option=sampler]")).to_be_visible()


def test_the_form_is_the_models_declared_options(page):
    # Each model's option fields are exactly what its class declares (trilemma.registry.generate_options), with
    # the declared range on the input: one declaration, and the page follows.
    import json

    from trilemma.registry import generate_options, shipped_models

    page.click("#tabs button[data-tab=generate]")
    for name in MODELS:
        declared = generate_options(json.loads((shipped_models()[name] / "config.json").read_text())["model_class"])
        # (the negative prompt has its box beside the prompt; strength is the edit tab's, for image-to-image)
        served = [o for o in declared if o.served and o.name not in ("negative_prompt", "strength")]
        page.select_option("#model", name)
        shown = page.eval_on_selector_all("#model-options [name]", "els => els.map(e => [e.name, e.max])")
        assert [n for n, _ in shown] == [o.name for o in served], name
        for (field, high), option in zip(shown, served):
            if option.high is not None and option.high != float("inf") and not field.endswith("steps"):
                assert float(high) == option.high, (name, field)


def test_a_bad_value_is_refused_with_its_field_named(page):
    page.click("#tabs button[data-tab=generate]")
    page.select_option("#model", "shapes-ldm-f8")
    page.fill("#prompt", "a green square")
    page.evaluate("document.getElementById('steps').removeAttribute('max')")  # past the page's own check
    page.fill("#steps", "5000")
    page.click("#generate")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("steps")
    page.fill("#steps", "")


def test_compare_shows_every_family_side_by_side(page, tmp_path):
    page.click("#tabs button[data-tab=compare]")
    page.fill("#compare-prompt", "two green squares")
    page.fill("#compare-seed", "3")
    page.click("#compare-submit")
    cards = page.locator(".compare-card")
    expect(cards).to_have_count(len(MODELS))
    for model in MODELS:
        card = page.locator(f".compare-card[data-model='{model}']")
        expect(card.locator(".status")).to_contain_text("s/image", timeout=60_000)
    page.wait_for_function("() => [...document.querySelectorAll('.compare-card img')].filter(i => i.naturalWidth === 64).length === %d" % len(MODELS))
    families = cards.locator(".family").all_inner_texts()
    assert {f.lower() for f in families} == {"diffusion", "autoregressive", "gan"}
    page.screenshot(path=str(shots(tmp_path) / "serve-compare.png"))


def test_draw_a_mask_and_inpaint(page, tmp_path):
    generate(page, "a red circle", "shapes-ldm-f8", 1)
    expect(page.locator("#progress-text")).to_contain_text("done in", timeout=60_000)
    page.locator("#results figure button", has_text="edit").first.click()
    expect(page.locator("#tab-edit")).to_be_visible()
    page.wait_for_function("() => !document.getElementById('canvas-hint').textContent.startsWith('Choose')")
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + 60, box["y"] + 60)
    page.mouse.down()
    for step in range(10):
        page.mouse.move(box["x"] + 60 + 12 * step, box["y"] + 60 + 10 * step)
    page.mouse.up()
    page.fill("#edit-prompt", "a blue square")
    page.fill("#edit-num-images", "2")
    page.select_option("#edit-model", "shapes-ldm-f8-inpaint")
    page.click("#edit-submit")
    expect(page.locator("#edit-progress-text")).to_contain_text("done in", timeout=60_000)
    expect(page.locator("#edit-results img")).to_have_count(2)
    page.wait_for_function("() => [...document.querySelectorAll('#edit-results img')].every(i => i.complete && i.naturalWidth === 64)")
    page.screenshot(path=str(shots(tmp_path) / "serve-edit.png"))
    # the edit is in the gallery too, marked as one
    page.click("#tabs button[data-tab=gallery]")
    expect(page.locator(".gallery-card .meta").first).to_contain_text("inpaint")
