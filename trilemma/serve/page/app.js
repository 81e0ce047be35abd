// The page: a client of the documented API (/docs) and nothing more. No framework and no build step, so the page
// works offline from the installed package, and every request it makes is one a script can make the same way.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], byName: {}, key: localStorage.getItem("trilemma-key") || "", current: null, editSource: null };

// --- talking to the API -------------------------------------------------------------------------------------------
function withKey(url) {
  return state.key ? url + (url.includes("?") ? "&" : "?") + "api_key=" + encodeURIComponent(state.key) : url;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.key) headers["X-API-Key"] = state.key;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401) $("key-box").hidden = false;
    const lines = (body.errors || []).map((e) => `${e.field}: ${e.message}`);
    const wait = response.headers.get("Retry-After");
    throw new Error((lines.length ? lines.join("\n") : body.detail || response.statusText) + (wait ? ` (retry in ${wait} s)` : ""));
  }
  return body;
}

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
  $("error").hidden = !error;
}

// Follows a job through its server-sent events until it is done, failed or cancelled.
function watch(job, onUpdate, onPreview) {
  return new Promise((resolve) => {
    const source = new EventSource(withKey(`/api/jobs/${job.id}/events`));
    source.addEventListener("job", (event) => {
      const j = JSON.parse(event.data);
      onUpdate(j);
      if (["done", "failed", "cancelled"].includes(j.status)) { source.close(); resolve(j); }
    });
    source.addEventListener("preview", (event) => onPreview && onPreview(JSON.parse(event.data).png));
    // The stream broke (a proxy, a restart): follow the job by long polls until it has finished.
    source.onerror = async () => {
      source.close();
      let j = job;
      try {
        do { j = await api(`/api/jobs/${job.id}?wait=30`); onUpdate(j); } while (!["done", "failed", "cancelled"].includes(j.status));
      } catch (e) { showError(e); }
      resolve(j);
    };
  });
}

function progressText(job) {
  if (job.status === "queued") return `queued${job.queue_position != null ? ` (#${job.queue_position + 1})` : ""}`;
  if (job.status === "running") {
    const p = job.progress || {};
    return p.total ? `${p.desc} ${p.step}/${p.total}${p.stage > 1 ? ` · stage ${p.stage}` : ""}` : "running";
  }
  if (job.status === "done") return `done in ${job.seconds.toFixed(2)} s (${job.seconds_per_image.toFixed(3)} s/image, ` +
    `${job.batch_images} image${job.batch_images > 1 ? "s" : ""} in its forward pass)`;
  return job.status + (job.error ? `: ${job.error}` : "");
}

function setProgress(prefix, job) {
  const p = job.progress || {};
  const fraction = job.status === "done" ? 1 : p.total ? p.step / p.total : 0;
  $(prefix + "-fill").style.width = `${Math.round(100 * fraction)}%`;
  $(prefix + "-text").textContent = progressText(job);
}

// --- models -------------------------------------------------------------------------------------------------------
function modelLabel(m) {
  const s = m.scores || {};
  const score = s.test != null ? ` · test ${s.test.toFixed(2)}` : "";
  return `${m.name} (${m.family}${score})`;
}

function fillModelSelect(select, filter) {
  const previous = select.value;
  select.innerHTML = "";
  for (const m of state.models.filter(filter)) {
    const option = document.createElement("option");
    option.value = m.name; option.textContent = modelLabel(m);
    select.appendChild(option);
  }
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
}

// A model's option fields are drawn from its declarations (/api/models "fields": type, range, choices, help, its
// default), so an option declared once in Python appears here with no change to the page. Negative prompt has its
// own box beside the prompt.
function optionField(f) {
  const id = f.name.replaceAll("_", "-");
  const label = document.createElement("label");
  label.dataset.option = f.name; label.title = f.help;
  label.append(f.name.replaceAll("_", " ").replace(/^./, (c) => c.toUpperCase()) + " ");
  let input;
  if (f.choices) {
    input = document.createElement("select");
    input.append(new Option("default", ""));
    for (const c of f.choices) input.append(new Option(c, c));
  } else {
    input = document.createElement("input");
    input.type = f.type === "str" ? "text" : "number";
    if (f.type === "float") input.step = "any";
    if (f.low !== null && f.low !== undefined) input.min = f.low;
    if (f.high !== null && f.high !== undefined) input.max = f.high;
    if (f.name.endsWith("steps") && state.maxSteps) input.max = Math.min(Number(input.max || Infinity), state.maxSteps);
    if (f.default !== null && f.default !== undefined) input.placeholder = `default ${f.default}`;
  }
  input.id = id; input.name = f.name; input.dataset.type = f.type;
  label.append(input);
  return label;
}

function optionValue(el) {
  const v = el.value.trim();
  if (v === "") return null;
  return el.dataset.type === "str" ? v : Number(v);
}

function showModelOptions() {
  const m = state.byName[$("model").value];
  if (!m) return;
  const kept = {};  // what was typed stays when the model changes, for the options the new one shares
  $("model-options").querySelectorAll("[name]").forEach((el) => { kept[el.name] = el.value; });
  $("model-options").innerHTML = "";
  for (const f of m.fields || []) {
    if (f.name === "negative_prompt") continue;
    const label = optionField(f);
    $("model-options").append(label);
    if (kept[f.name] !== undefined) label.querySelector("[name]").value = kept[f.name];
  }
  document.querySelectorAll("#generate-form > [data-option]").forEach((el) => { el.hidden = !m.options.includes(el.dataset.option); });
  const s = m.scores || {};
  $("model-card").textContent = `${m.model_class}` + (s.test != null ? ` · Shapes pass rate: test ${s.test.toFixed(3)}, ` +
    `test-novel ${(s["test-novel"] ?? NaN).toFixed(3)}` : "") + (m.edits.length ? ` · edits: ${m.edits.join(", ")}` : "");
}

// --- images -------------------------------------------------------------------------------------------------------
function figure(job, k, url) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = withKey(url); img.alt = job.params.prompt || "image";
  const caption = document.createElement("figcaption");
  const seed = document.createElement("span");
  seed.textContent = `seed ${job.params.seed + k}`;
  const link = document.createElement("a");
  link.href = withKey(url + "?download=true"); link.textContent = "PNG"; link.download = `trilemma-${job.id}-${k}.png`;
  const edit = document.createElement("button");
  edit.type = "button"; edit.textContent = "edit"; edit.onclick = () => editImage(url);
  caption.append(seed, link, edit);
  fig.append(img, caption);
  return fig;
}

// --- generate -----------------------------------------------------------------------------------------------------
function numberOrNull(id) { const v = $(id).value.trim(); return v === "" ? null : Number(v); }

async function generate(event) {
  event.preventDefault();
  showError(null);
  const m = state.byName[$("model").value];
  const body = { prompt: $("prompt").value, model: m.name, num_images: numberOrNull("num-images") || 1,
                 seed: $("random-seed").checked ? -1 : numberOrNull("seed") };
  const fields = { negative_prompt: $("negative-prompt").value || null };
  $("model-options").querySelectorAll("[name]").forEach((el) => { fields[el.name] = optionValue(el); });
  for (const [k, v] of Object.entries(fields)) if (v !== null && m.options.includes(k)) body[k] = v;
  $("generate").disabled = true;
  try {
    const job = await api("/api/generate", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    state.current = job;
    $("cancel").disabled = false;
    $("progress").hidden = false; $("preview").hidden = true;
    const done = await watch(job, (j) => setProgress("progress", j), (png) => { $("preview").src = "data:image/png;base64," + png; $("preview").hidden = false; });
    setProgress("progress", done);
    $("preview").hidden = true;
    $("results").innerHTML = "";
    done.images.forEach((url, k) => $("results").appendChild(figure(done, k, url)));
    if (done.status === "failed") showError(done.error);
    refreshGallery();
  } catch (e) { showError(e); }
  finally { $("generate").disabled = false; $("cancel").disabled = true; state.current = null; }
}

async function cancel() {
  if (state.current) await api(`/api/jobs/${state.current.id}/cancel`, { method: "POST" }).catch(showError);
}

function reuse(job) {
  $("prompt").value = job.params.prompt || "";
  $("negative-prompt").value = job.params.negative_prompt || "";
  if (state.byName[job.model]) $("model").value = job.model;
  $("seed").value = job.params.seed; $("random-seed").checked = false; $("seed").disabled = false;
  $("num-images").value = job.params.num_images || 1;
  showModelOptions();
  $("model-options").querySelectorAll("[name]").forEach((el) => { el.value = job.params[el.name] ?? ""; });
  switchTab("generate");
}

// --- edit ---------------------------------------------------------------------------------------------------------
function editMode() { return document.querySelector("input[name=edit-mode]:checked").value; }

function showEditMode() {
  const mode = editMode();
  fillModelSelect($("edit-model"), (m) => m.edits.includes(mode));
  $("strength-label").hidden = mode !== "img2img";
  $("brush-label").hidden = $("clear-mask").hidden = $("mask-canvas").hidden = mode !== "inpaint";
  $("edit-prompt").placeholder = mode === "vary" ? "optional caption" : "what the whole edited image shows";
}

async function loadEditImage(blob) {
  const bitmap = await createImageBitmap(blob);
  state.editSource = { blob, width: bitmap.width, height: bitmap.height };
  const ctx = $("edit-canvas").getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, 256, 256);
  ctx.drawImage(bitmap, 0, 0, 256, 256);
  clearMask();
  $("canvas-hint").textContent = `${bitmap.width}x${bitmap.height} image; paint the region to redraw (inpaint).`;
}

async function editImage(url) {
  const response = await fetch(withKey(url));
  $("edit-image").value = "";  // the image now comes from here, not from a file chosen before
  await loadEditImage(await response.blob());
  switchTab("edit");
}

function clearMask() { $("mask-canvas").getContext("2d").clearRect(0, 0, 256, 256); }

function setUpMaskDrawing() {
  const canvas = $("mask-canvas"), ctx = canvas.getContext("2d");
  let last = null;  // the previous point of the stroke: segments join it, so a quick stroke leaves no gaps
  const at = (e) => { const r = canvas.getBoundingClientRect(); return [(e.clientX - r.left) * 256 / r.width, (e.clientY - r.top) * 256 / r.height]; };
  const paint = (e) => {
    if (!last) return;
    const point = at(e);
    ctx.strokeStyle = "#fff"; ctx.lineWidth = Number($("brush").value) * 4; ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(...last); ctx.lineTo(...point); ctx.stroke();
    last = point;
  };
  canvas.addEventListener("pointerdown", (e) => { last = at(e); canvas.setPointerCapture(e.pointerId); paint(e); });
  canvas.addEventListener("pointermove", paint);
  canvas.addEventListener("pointerup", () => { last = null; });
}

// The drawn mask at the image's own size: white where the model redraws, black elsewhere.
function maskBlob() {
  const { width, height } = state.editSource;
  const out = document.createElement("canvas");
  out.width = width; out.height = height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, width, height);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage($("mask-canvas"), 0, 0, width, height);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

async function submitEdit(event) {
  event.preventDefault();
  showError(null);
  if (!state.editSource) { showError("choose an image to edit"); return; }
  const mode = editMode(), form = new FormData();
  form.append("image", state.editSource.blob, "image.png");
  if (mode === "inpaint") form.append("mask", await maskBlob(), "mask.png");
  if ($("edit-prompt").value) form.append("prompt", $("edit-prompt").value);
  form.append("model", $("edit-model").value);
  form.append("seed", $("edit-seed").value || "0");
  form.append("num_images", $("edit-num-images").value || "1");
  if ($("edit-steps").value) form.append("steps", $("edit-steps").value);
  if (mode === "img2img") form.append("strength", $("strength").value);
  $("edit-submit").disabled = true;
  try {
    const job = await api(`/api/${mode}`, { method: "POST", body: form });
    $("edit-progress").hidden = false;
    const done = await watch(job, (j) => setProgress("edit-progress", j));
    setProgress("edit-progress", done);
    $("edit-results").innerHTML = "";
    done.images.forEach((url, k) => $("edit-results").appendChild(figure(done, k, url)));
    if (done.status === "failed") showError(done.error);
    refreshGallery();
  } catch (e) { showError(e); }
  finally { $("edit-submit").disabled = false; }
}

// --- compare ------------------------------------------------------------------------------------------------------
async function compare(event) {
  event.preventDefault();
  showError(null);
  const body = { prompt: $("compare-prompt").value, seed: numberOrNull("compare-seed") };
  $("compare-submit").disabled = true;
  try {
    const { group, jobs } = await api("/api/compare", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const grid = $("compare-results");
    grid.innerHTML = "";
    const cards = {};
    for (const job of jobs) {
      const m = state.byName[job.model];
      const card = document.createElement("figure");
      card.className = "compare-card"; card.dataset.model = job.model;
      // Built node by node, never from markup: names come from model folders the server was given.
      const family = document.createElement("div");
      family.className = "family " + m.family; family.textContent = m.family;
      const name = document.createElement("strong");
      name.textContent = job.model;
      const slot = document.createElement("div");
      slot.className = "slot";
      const status = document.createElement("figcaption");
      status.className = "status"; status.textContent = "queued";
      card.append(family, name, slot, status);
      grid.appendChild(card);
      cards[job.id] = card;
    }
    // One poll of the group for all its jobs: an event stream per model would pass the browser's six connections.
    let pending = jobs.length;
    while (pending) {
      const listed = await api(`/api/jobs?group=${group}`);
      pending = 0;
      for (const job of listed) {
        const card = cards[job.id];
        card.querySelector(".status").textContent = job.status === "done"
          ? `${job.seconds_per_image.toFixed(3)} s/image` : progressText(job);
        if (job.status === "done" && !card.querySelector("img")) {
          const img = document.createElement("img");
          img.src = withKey(job.images[0]); img.alt = job.model;
          card.querySelector(".slot").appendChild(img);
        }
        if (!["done", "failed", "cancelled"].includes(job.status)) pending++;
      }
      if (pending) await new Promise((r) => setTimeout(r, 300));
    }
    refreshGallery();
  } catch (e) { showError(e); }
  finally { $("compare-submit").disabled = false; }
}

// --- gallery ------------------------------------------------------------------------------------------------------
async function refreshGallery() {
  let jobs;
  try { jobs = await api("/api/jobs?limit=500"); } catch (e) { return; }
  const gallery = $("gallery");
  gallery.innerHTML = "";
  const done = jobs.filter((j) => j.status === "done");
  $("gallery-count").textContent = done.length ? `(${done.length})` : "";
  for (const job of done) {
    const card = document.createElement("div");
    card.className = "gallery-card"; card.dataset.job = job.id;
    const thumbs = document.createElement("div");
    thumbs.className = "thumbs";
    job.images.forEach((url) => { const img = document.createElement("img"); img.src = withKey(url); img.alt = job.params.prompt || ""; thumbs.appendChild(img); });
    const prompt = document.createElement("div");
    prompt.className = "prompt"; prompt.textContent = job.params.prompt || "(variation)";
    const meta = document.createElement("div");
    meta.className = "meta";
    const p = job.params;
    meta.textContent = [job.kind !== "generate" ? job.kind : null, job.model, `seed ${p.seed}`, p.steps ? `${p.steps} steps` : null,
      p.guidance_scale != null ? `cfg ${p.guidance_scale}` : null, p.sampler, `${job.seconds_per_image} s/image`].filter(Boolean).join(" · ");
    const actions = document.createElement("div");
    actions.className = "actions";
    if (job.kind === "generate") {
      const again = document.createElement("button");
      again.textContent = "reuse"; again.onclick = () => reuse(job);
      actions.appendChild(again);
    }
    const edit = document.createElement("button");
    edit.textContent = "edit"; edit.onclick = () => editImage(job.images[0]);
    const download = document.createElement("a");
    download.href = withKey(job.images[0] + "?download=true"); download.textContent = "PNG";
    actions.append(edit, download);
    card.append(thumbs, prompt, meta, actions);
    gallery.appendChild(card);
  }
}

// --- tabs and start-up --------------------------------------------------------------------------------------------
function switchTab(name) {
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.id === "tab-" + name));
  if (name === "gallery") refreshGallery();
}

// Wiring, once.
function setUp() {
  document.querySelectorAll("#tabs button").forEach((b) => (b.onclick = () => switchTab(b.dataset.tab)));
  $("api-key").value = state.key;
  $("api-key").onchange = () => { state.key = $("api-key").value; localStorage.setItem("trilemma-key", state.key); load(); };
  $("generate-form").onsubmit = generate;
  $("cancel").onclick = cancel;
  $("model").onchange = showModelOptions;
  $("random-seed").onchange = () => { $("seed").disabled = $("random-seed").checked; };
  $("edit-form").onsubmit = submitEdit;
  $("edit-image").onchange = () => $("edit-image").files[0] && loadEditImage($("edit-image").files[0]);
  document.querySelectorAll("input[name=edit-mode]").forEach((r) => (r.onchange = showEditMode));
  $("strength").oninput = () => { $("strength-value").textContent = $("strength").value; };
  $("clear-mask").onclick = clearMask;
  $("compare-form").onsubmit = compare;
  setUpMaskDrawing();
}

// What the server offers; again when the key changes.
async function load() {
  showError(null);
  try {
    const health = await fetch("/api/health").then((r) => r.json());
    if (health.auth) $("key-box").hidden = false;
    $("num-images").max = $("edit-num-images").max = health.limits.max_images;
    $("edit-steps").max = health.limits.max_steps;
    state.maxSteps = health.limits.max_steps;  // the server's cap on any steps field, drawn with the model's fields
    state.models = await api("/api/models");
    state.byName = Object.fromEntries(state.models.map((m) => [m.name, m]));
    fillModelSelect($("model"), () => true);
    if (state.byName[health.default_model] && !state.loadedOnce) $("model").value = health.default_model;
    state.loadedOnce = true;
    showModelOptions();
    showEditMode();
    $("server-status").textContent = `${state.models.length} models · queue ${health.queued}/${health.queue_size}`;
    document.body.dataset.ready = "true";
    refreshGallery();
  } catch (e) { showError(e); }
}

setUp();
load();
