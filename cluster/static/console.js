// genaug web console: plain JS against the HTTP API of the same origin (no build step, no libraries).
// The API token lives in sessionStorage only (this tab, until it is closed) and is sent as a Bearer token.
"use strict";

const TOKEN_KEY = "genaug.token";
const POLL_MS = 1000;
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

// ------------------------------------------------------------------ API and token

class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.detail;
    super(typeof detail === "string" ? detail : (body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.error = (body && body.error) || `HTTP ${status}`;
    this.detail = detail;
  }
}

let tokenPrompt = null; // one pending prompt shared by every request that got a 401

function askToken(reason) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = $("#token-dialog");
  $("#token-reason").textContent = reason;
  $("#token-input").value = "";
  tokenPrompt = new Promise((resolve) => {
    const form = $("#token-form");
    const done = (event) => {
      event.preventDefault();
      const token = $("#token-input").value.trim();
      if (!token) return;
      form.removeEventListener("submit", done);
      sessionStorage.setItem(TOKEN_KEY, token);
      dialog.close();
      tokenPrompt = null;
      updateTokenButton();
      resolve();
    };
    form.addEventListener("submit", done);
  });
  if (!dialog.open) dialog.showModal();
  $("#token-input").focus();
  return tokenPrompt;
}

function updateTokenButton() {
  $("#forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
}

// fetch the API; on 401 ask for the token (again) and retry; errors throw ApiError with {error, detail}.
async function api(method, path, body, as = "json") {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const reply = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    if (reply.status === 401) {
      if (token && sessionStorage.getItem(TOKEN_KEY) === token) sessionStorage.removeItem(TOKEN_KEY);
      await askToken(
        token ? "The service rejected that token; enter the API token." : "This service needs its API token."
      );
      continue;
    }
    if (!reply.ok) {
      let parsed = null;
      try {
        parsed = await reply.json();
      } catch (_) {
        parsed = { error: reply.statusText || `HTTP ${reply.status}`, detail: null };
      }
      throw new ApiError(reply.status, parsed);
    }
    if (as === "blob") return { blob: await reply.blob(), headers: reply.headers };
    if (as === "text") return reply.text();
    return reply.json();
  }
}

// ------------------------------------------------------------------ errors next to fields

// Which form field an API message is about (the API names the bad value in its message).
const FIELD_PATTERNS = [
  [/class (['"])(.*?)\1/, (m) => `counts.${m[2]}`],
  [/\bper_class\b/, () => "per_class"],
  [/\bshard_rows\b|shards is above/, () => "shard_rows"],
  [/\bseed\b/, () => "seed"],
  [/\bfilter\b/, () => "filter"],
  [/^(dataset|reference) |\bdataset\b/, () => "dataset"],
  [/\bsamples\b/, () => "samples"],
  [/\btop\b/, () => "top"],
  [/\boutput\b|\bout\b|storage root/, () => "out"],
  [/\bmodel\b/, () => "model"],
  [/\bcounts\b|total rows/, () => "counts"],
];

function clearErrors(form) {
  for (const span of $$("[data-err-for]", form)) span.textContent = "";
  for (const input of $$(".invalid", form)) input.classList.remove("invalid");
}

function errorSpan(form, field) {
  return $$("[data-err-for]", form).find((s) => s.dataset.errFor === field);
}

function fieldFor(form, candidates) {
  for (const f of candidates) if (f && errorSpan(form, f)) return f;
  return "";
}

function showError(form, err) {
  clearErrors(form);
  const items = [];
  if (err instanceof ApiError && Array.isArray(err.detail)) {
    // 422 from validation: [{loc: ["body", field, key?], msg, type}]
    for (const d of err.detail) {
      const loc = (d.loc || []).filter((p) => p !== "body").map(String);
      const candidates = loc.length > 1 ? [`${loc[0]}.${loc[1]}`, loc[0]] : [loc[0]];
      items.push([fieldFor(form, candidates), `${d.msg}${loc.length ? ` (${loc.join(".")})` : ""}`]);
    }
  } else {
    const text = err instanceof ApiError ? err.message : `${err.message || err}`;
    let field = "";
    for (const [re, name] of FIELD_PATTERNS) {
      const m = text.match(re);
      if (m && (field = fieldFor(form, [name(m)]))) break;
    }
    items.push([field, text]);
  }
  for (const [field, text] of items) {
    const span = errorSpan(form, field) || errorSpan(form, "");
    span.textContent = span.textContent ? `${span.textContent}; ${text}` : text;
    if (err.error) span.title = err.error;
    const input = $$("[data-field]", form).find((i) => i.dataset.field === field);
    if (input) input.classList.add("invalid");
  }
}

// ------------------------------------------------------------------ models

const models = new Map(); // ref ("name:vK") -> version summary
let modelsLoaded = null;

function loadModels() {
  modelsLoaded ||= (async () => {
    const list = (await api("GET", "v1/models")).models;
    const details = await Promise.all(list.map((m) => api("GET", `v1/models/${encodeURIComponent(m.name)}`)));
    for (const d of details) for (const v of d.versions) models.set(v.ref, { ...v, name: d.name });
    return details;
  })();
  modelsLoaded.catch(() => (modelsLoaded = null));
  return modelsLoaded;
}

function fmtNumber(x, digits = 3) {
  if (typeof x !== "number") return x;
  return Number.isInteger(x) ? x.toLocaleString("en") : x.toPrecision(digits);
}

function fmtValue(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return fmtNumber(v);
  if (Array.isArray(v)) return v.map(fmtValue).join(", ");
  if (typeof v === "object") {
    return Object.entries(v)
      .map(([k, x]) => `${k}: ${fmtValue(x)}`)
      .join(", ");
  }
  return String(v);
}

function imageSize(shape) {
  if (!Array.isArray(shape) || shape.length !== 3) return fmtValue(shape);
  const [c, h, w] = shape;
  return `${w}×${h}, ${c} channel${c === 1 ? "" : "s"}`;
}

function facts(pairs) {
  const dl = el("dl", { class: "facts" });
  for (const [k, v] of pairs) if (v !== undefined) dl.append(el("dt", { text: k }), el("dd", { text: v }));
  return dl;
}

function metricPairs(metrics) {
  if (!metrics) return [["metrics", "none yet (genaug eval)"]];
  const pairs = [];
  const walk = (obj, prefix) => {
    for (const [k, v] of Object.entries(obj)) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v) && prefix.split(".").length < 2) walk(v, key);
      else pairs.push([key, fmtValue(v)]);
    }
  };
  walk(metrics, "");
  return pairs.slice(0, 40);
}

async function sampleGrid(v, img, caption) {
  try {
    const { blob } = await api("GET", `v1/models/${encodeURIComponent(v.ref)}/samples.png`, undefined, "blob");
    img.src = URL.createObjectURL(blob);
    caption.textContent = "samples.png from training, a row per class";
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 404) throw e;
    const { blob } = await api("POST", "v1/samples", { model: v.ref, per_class: 8, seed: 0, format: "png" }, "blob");
    img.src = URL.createObjectURL(blob);
    caption.textContent = "no samples.png in the registry: drawn now (8 per class, seed 0), a row per class";
  }
}

function renderVersion(v) {
  const img = el("img", { alt: `${v.ref} samples`, class: "grid" });
  const caption = el("figcaption", { text: "loading samples…" });
  const box = el(
    "div",
    { class: "version panel", dataset: { ref: v.ref } },
    el(
      "div",
      {},
      el("h3", { text: v.ref }),
      facts([
        ["type", fmtValue(v.type)],
        ["dataset", fmtValue(v.dataset)],
        ["classes", `${(v.classes || []).length}: ${fmtValue(v.classes)}`],
        ["image size", imageSize(v.image_shape)],
        ["epochs", fmtValue(v.epochs)],
        ["final losses", fmtValue(v.final_losses)],
        ["images/s", fmtValue(v.images_per_s)],
        ["train time (s)", fmtValue(v.train_time_s)],
        ["workers", fmtValue(v.workers)],
        ["created", fmtValue(v.created_at)],
        ["checkpoint", v.checkpoint_sha256 ? `sha256 ${v.checkpoint_sha256.slice(0, 16)}…` : "–"],
      ]),
      el("h3", { text: "Quality" }),
      facts(metricPairs(v.metrics)),
      el("p", {}, el("a", { href: `#try`, text: "Try it →", onclick: () => selectModel(v.ref) }))
    ),
    el("figure", { class: "samples" }, img, caption)
  );
  sampleGrid(v, img, caption).catch((e) => {
    img.hidden = true;
    caption.textContent = `no sample grid: ${e.message}`;
  });
  return box;
}

async function showModels() {
  const status = $("#models-status");
  try {
    const details = await loadModels();
    const list = $("#models-list");
    list.replaceChildren();
    for (const d of details) {
      const section = el("section", { class: "model", dataset: { model: d.name } }, el("h2", { text: d.name }));
      for (const v of [...d.versions].reverse()) section.append(renderVersion(models.get(v.ref)));
      list.append(section);
    }
    status.textContent = details.length ? "" : "No models registered yet: run `genaug train`.";
    status.classList.remove("error");
  } catch (e) {
    status.textContent = `Could not load models: ${e.message}`;
    status.classList.add("error");
  }
}

// ------------------------------------------------------------------ forms shared by Try it and Jobs

function fillModelSelect(select) {
  const current = select.value;
  select.replaceChildren();
  for (const ref of models.keys()) select.append(el("option", { value: ref, text: ref }));
  if (models.has(current)) select.value = current;
}

function selectModel(ref) {
  for (const s of [$("#try-model"), $("#job-model")]) {
    if (models.has(ref)) {
      s.value = ref;
      s.dispatchEvent(new Event("change"));
    }
  }
}

// The fields both forms share, in their <div data-request>: model, counts (filled by buildCounts), seed
// and the quality filter; ids "<prefix>-model", "<prefix>-seed", "<prefix>-filter" (prefix "try", "job").
function buildRequestFields(form) {
  const p = form.id.replace(/-form$/, "");
  const row = (id, label, input, field) =>
    el("div", { class: "row" }, el("label", { htmlFor: id, text: label }), input, el("span", { class: "err", dataset: { errFor: field } }));
  $("[data-request]", form).replaceChildren(
    row(`${p}-model`, "Model", el("select", { id: `${p}-model`, name: "model", dataset: { field: "model" } }), "model"),
    el("fieldset", { class: "counts", dataset: { counts: "" } }),
    row(`${p}-seed`, "Seed", el("input", { type: "number", id: `${p}-seed`, name: "seed", value: "0", dataset: { field: "seed" } }), "seed"),
    row(`${p}-filter`, "Quality filter", [
      el("input", { type: "checkbox", id: `${p}-filter`, name: "filter", dataset: { field: "filter" } }),
      el("label", { htmlFor: `${p}-filter`, text: "only samples the domain classifier reads as the requested class" }),
    ], "filter")
  );
}

function buildCounts(form, defaultPerClass) {
  const fieldset = $("[data-counts]", form);
  const prefix = form.id;
  const allId = `${prefix}-per-class`;
  fieldset.replaceChildren(
    el("legend", { text: "Count" }),
    el(
      "div",
      { class: "row" },
      el("input", { type: "radio", name: "mode", value: "all", id: `${prefix}-mode-all`, checked: true }),
      el("label", { htmlFor: `${prefix}-mode-all`, text: "Same for every class" }),
      el("input", { type: "number", id: allId, value: defaultPerClass, dataset: { field: "per_class" } }),
      el("span", { class: "err", dataset: { errFor: "per_class" } })
    ),
    el(
      "div",
      { class: "row" },
      el("input", { type: "radio", name: "mode", value: "each", id: `${prefix}-mode-each` }),
      el("label", { htmlFor: `${prefix}-mode-each`, text: "Per class (empty: none)" }),
      el("span", { class: "err", dataset: { errFor: "counts" } })
    ),
    el("div", { class: "class-grid", hidden: true })
  );
  const grid = $(".class-grid", fieldset);
  const sync = () => {
    const each = $(`#${prefix}-mode-each`).checked;
    grid.hidden = !each;
    $(`#${allId}`).disabled = each;
  };
  for (const r of $$("input[name=mode]", fieldset)) r.addEventListener("change", sync);
  $(`#${allId}`).addEventListener("focus", () => ($(`#${prefix}-mode-all`).checked = true));
}

function fillClassInputs(form) {
  const grid = $(".class-grid", form);
  const v = models.get($("select[name=model]", form).value);
  const old = new Map($$("input", grid).map((i) => [i.dataset.className, i.value]));
  grid.replaceChildren();
  (v ? v.classes : []).forEach((name, i) => {
    const id = `${form.id}-class-${i}`;
    grid.append(
      el(
        "div",
        { class: "cell" },
        el("label", { htmlFor: id, text: name, title: `class ${i}: ${name}` }),
        el("input", {
          type: "number",
          id,
          value: old.get(name) || "",
          dataset: { field: `counts.${name}`, className: name, index: i },
        }),
        el("span", { class: "err", dataset: { errFor: `counts.${name}` } })
      )
    );
  });
}

function numberOrText(value) {
  const v = value.trim();
  if (v === "") return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : v;
}

function countsRequest(form) {
  if ($(`#${form.id}-mode-all`).checked) return { per_class: numberOrText($(`#${form.id}-per-class`).value) ?? null };
  const counts = {};
  for (const input of $$(".class-grid input", form)) {
    const n = numberOrText(input.value);
    if (n !== undefined) counts[input.dataset.className] = n;
  }
  return { counts };
}

async function busy(button, work) {
  button.disabled = true;
  try {
    return await work();
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ try it

let tryUrl = null;

async function generate(event) {
  event.preventDefault();
  const form = $("#try-form");
  clearErrors(form);
  const body = {
    model: $("#try-model").value,
    ...countsRequest(form),
    seed: numberOrText($("#try-seed").value) ?? 0,
    format: "png",
  };
  if ($("#try-filter").checked) body.filter = "label";
  await busy($("#try-generate"), async () => {
    try {
      const { blob, headers } = await api("POST", "v1/samples", body, "blob");
      const img = $("#try-grid");
      if (tryUrl) URL.revokeObjectURL(tryUrl);
      tryUrl = URL.createObjectURL(blob);
      img.src = tryUrl;
      const v = models.get(body.model);
      const rows = body.counts ? Object.keys(body.counts) : v ? v.classes : [];
      $("#try-caption").textContent = `${headers.get("X-Genaug-Model") || body.model}, seed ${body.seed}: a row per class (${rows.join(", ")})`;
      $("#try-result").hidden = false;
    } catch (e) {
      showError(form, e);
    }
  });
}

// ------------------------------------------------------------------ jobs

let pollTimer = null;

async function submitJob(event) {
  event.preventDefault();
  const form = $("#job-form");
  clearErrors(form);
  const body = { model: $("#job-model").value, ...countsRequest(form), seed: numberOrText($("#job-seed").value) ?? 0 };
  const shardRows = numberOrText($("#job-shard-rows").value);
  if (shardRows !== undefined) body.shard_rows = shardRows;
  if ($("#job-filter").checked) body.filter = "label";
  const out = $("#job-out").value.trim();
  if (out) body.out = out;
  await busy($("#job-submit"), async () => {
    try {
      const job = await api("POST", "v1/jobs", body);
      upsertJob(job, true);
      refreshJobs();
    } catch (e) {
      showError(form, e);
    }
  });
}

function progressText(job) {
  const parts = [`${fmtNumber(job.rows_done || 0)} / ${fmtNumber(job.total_rows || 0)} rows`];
  parts.push(`${job.shards_done || 0} / ${job.total_shards || 0} shards`);
  if (job.rows_per_s) parts.push(`${fmtNumber(job.rows_per_s)} rows/s`);
  if (job.elapsed_s) parts.push(`${fmtNumber(job.elapsed_s)} s`);
  return parts.join(" · ");
}

// A failed job's error: its last line (the cause) in full view, the whole text (a traceback) folded.
function showJobError(box, error) {
  const text = (error || "").replace(/\x1b\[[0-9;]*m/g, "").trim();
  if (box.dataset.raw === text) return;
  box.dataset.raw = text;
  const lines = text.split("\n").map((l) => l.trim()).filter(Boolean);
  if (lines.length <= 1) {
    box.replaceChildren(el("div", { class: "job-error-summary", text }));
    return;
  }
  box.replaceChildren(
    el("div", { class: "job-error-summary", text: lines[lines.length - 1] }),
    el("details", {}, el("summary", { text: "full error" }), el("pre", { text }))
  );
}

function upsertJob(job, first = false) {
  const body = $("#jobs-body");
  let row = document.getElementById(`job-${job.id}`);
  if (!row) {
    row = el(
      "tr",
      { id: `job-${job.id}`, dataset: { job: job.id } },
      el("td", { class: "job-id", text: job.id }),
      el("td", {}, el("span", { class: "job-model" }), el("div", { class: "job-output caption" })),
      el("td", {}, el("span", { class: "badge job-status" }), el("div", { class: "job-error" })),
      el("td", {}, el("progress", { max: 1, value: 0 }), el("span", { class: "progress-text" })),
      el("td", { class: "job-created" }),
      el(
        "td",
        {},
        el("button", { type: "button", class: "small job-cancel", text: "Cancel", onclick: () => cancelJob(job.id) }),
        el("button", { type: "button", class: "small job-open", text: "Manifest & card", onclick: () => openJob(job.id) }),
        el("button", { type: "button", class: "small job-audit", text: "Audit results", onclick: () => openAudit(job.id) })
      )
    );
    if (first) body.prepend(row);
    else body.append(row);
  }
  const status = $(".job-status", row);
  status.textContent = job.status;
  status.className = `badge job-status ${job.status}`;
  row.dataset.status = job.status;
  showJobError($(".job-error", row), job.status === "failed" ? job.error : null);
  $(".job-model", row).textContent = (job.spec && job.spec.model) || "";
  $(".job-output", row).textContent = job.output || "";
  const bar = $("progress", row);
  bar.value = job.status === "succeeded" ? 1 : job.progress || 0;
  $(".progress-text", row).textContent = progressText(job);
  $(".job-created", row).textContent = job.created_at ? new Date(job.created_at * 1000).toLocaleString() : "";
  $(".job-cancel", row).hidden = FINISHED.has(job.status);
  $(".job-open", row).hidden = job.status !== "succeeded";
  $(".job-audit", row).hidden = !(job.spec && job.spec.kind === "audit");
}

function openAudit(id) {
  location.hash = "#audit";
  showAudit(id);
}

async function refreshJobs() {
  const status = $("#jobs-status");
  try {
    const { jobs } = await api("GET", "v1/jobs?limit=100");
    const seen = new Set(jobs.map((j) => `job-${j.id}`));
    for (const row of $$("#jobs-body tr")) if (!seen.has(row.id)) row.remove();
    jobs.forEach((j) => upsertJob(j));
    // newest first, as the API lists them
    const body = $("#jobs-body");
    for (const j of jobs) body.append(document.getElementById(`job-${j.id}`));
    status.textContent = jobs.length ? `${jobs.filter((j) => !FINISHED.has(j.status)).length} active` : "No jobs yet.";
    status.classList.remove("error");
  } catch (e) {
    status.textContent = `Could not load jobs: ${e.message}`;
    status.classList.add("error");
  }
}

function startPolling() {
  if (pollTimer) return;
  const tick = async () => {
    await refreshJobs();
    pollTimer = currentTab() === "jobs" ? setTimeout(tick, POLL_MS) : null;
  };
  pollTimer = setTimeout(tick, 0);
}

async function cancelJob(id) {
  const row = document.getElementById(`job-${id}`);
  try {
    upsertJob(await api("DELETE", `v1/jobs/${encodeURIComponent(id)}`));
  } catch (e) {
    showJobError($(".job-error", row), e.message);
  }
}

async function openJob(id) {
  const panel = $("#job-detail");
  $("#job-detail-title").textContent = id;
  $("#job-card").textContent = "loading…";
  $("#job-manifest").textContent = "loading…";
  panel.hidden = false;
  const [card, manifest] = await Promise.allSettled([
    api("GET", `v1/jobs/${encodeURIComponent(id)}/card`, undefined, "text"),
    api("GET", `v1/jobs/${encodeURIComponent(id)}/manifest`),
  ]);
  $("#job-card").textContent = card.status === "fulfilled" ? card.value : `error: ${card.reason.message}`;
  $("#job-manifest").textContent =
    manifest.status === "fulfilled" ? JSON.stringify(manifest.value, null, 2) : `error: ${manifest.reason.message}`;
  panel.scrollIntoView();
}

// ------------------------------------------------------------------ audit

let auditShown = null; // the job id whose result the Audit tab shows (polling stops when it changes)
const auditUrls = [];

function fillAuditModels() {
  const select = $("#audit-model");
  const current = select.value;
  select.replaceChildren();
  for (const [ref, v] of models) if (v.type === "cvae") select.append(el("option", { value: ref, text: ref }));
  if (models.has(current) && models.get(current).type === "cvae") select.value = current;
  auditModelChanged();
}

function auditModelChanged() {
  const v = models.get($("#audit-model").value);
  const input = $("#audit-dataset");
  input.placeholder = v && v.dataset ? `${v.dataset} (its training data)` : "digits";
  if (!input.value && v && v.dataset) input.value = v.dataset;
}

// Dataset choices: built-in data, each cVAE's training data, and the outputs of finished generation jobs.
async function fillAuditDatasets() {
  const specs = new Set(["digits", "shapes"]);
  for (const v of models.values()) if (v.type === "cvae" && v.dataset) specs.add(v.dataset);
  try {
    const { jobs } = await api("GET", "v1/jobs?status=succeeded&limit=100");
    for (const j of jobs) if (!(j.spec && j.spec.kind === "audit") && j.output) specs.add(`parquet:${j.output}`);
  } catch (_) {
    // the list is a convenience: any spec may be typed
  }
  $("#audit-datasets").replaceChildren(...[...specs].map((s) => el("option", { value: s })));
}

async function runAudit(event) {
  event.preventDefault();
  const form = $("#audit-form");
  clearErrors(form);
  const body = { kind: "audit", model: $("#audit-model").value, dataset: $("#audit-dataset").value.trim(), split: $("#audit-split").value };
  for (const field of ["samples", "top"]) {
    const n = numberOrText($(`#audit-${field}`).value);
    if (n !== undefined) body[field] = n;
  }
  await busy($("#audit-run"), async () => {
    try {
      const job = await api("POST", "v1/jobs", body);
      showAudit(job.id);
    } catch (e) {
      showError(form, e);
    }
  });
}

function showAudit(id) {
  auditShown = id;
  $("#audit-result").hidden = false;
  $("#audit-report").hidden = true;
  $("#audit-title").textContent = `Audit ${id}`;
  $("#audit-status").textContent = "queued…";
  $("#audit-status").classList.remove("error");
  pollAudit(id);
}

async function pollAudit(id) {
  if (auditShown !== id) return;
  let job;
  try {
    job = await api("GET", `v1/jobs/${encodeURIComponent(id)}`);
  } catch (e) {
    $("#audit-status").textContent = `Could not load the job: ${e.message}`;
    $("#audit-status").classList.add("error");
    return;
  }
  $("#audit-progress").value = job.status === "succeeded" ? 1 : job.progress || 0;
  const spec = job.spec || {};
  $("#audit-title").textContent = `Audit ${id}: ${spec.dataset || ""} (${spec.split || ""}) by ${spec.model || ""}`;
  if (job.status === "succeeded") {
    await showAuditReport(id);
    return;
  }
  const status = $("#audit-status");
  status.textContent = job.status === "failed" ? `failed: ${job.error}` : `${job.status}: ${progressText(job)}`;
  status.classList.toggle("error", job.status === "failed");
  if (!FINISHED.has(job.status)) setTimeout(() => pollAudit(id), POLL_MS);
}

async function showAuditReport(id) {
  const top = numberOrText($("#audit-top").value) || 20;
  const path = `v1/jobs/${encodeURIComponent(id)}/audit`;
  const [view, outliers, errors] = await Promise.all([
    api("GET", `${path}?top=${encodeURIComponent(top)}`),
    api("GET", `${path}/outliers.png`, undefined, "blob"),
    api("GET", `${path}/label_errors.png`, undefined, "blob"),
  ]);
  if (auditShown !== id) return;
  while (auditUrls.length) URL.revokeObjectURL(auditUrls.pop());
  for (const [img, { blob }] of [[$("#audit-outliers-grid"), outliers], [$("#audit-errors-grid"), errors]]) {
    auditUrls.push(URL.createObjectURL(blob));
    img.src = auditUrls[auditUrls.length - 1];
  }
  const s = view.summary;
  $("#audit-summary").replaceChildren(
    ...[
      ["images", fmtNumber(s.images)],
      ["importance samples K", s.importance_samples_K],
      ["mean nll (nats)", fmtNumber(s.mean_nll_nats)],
      ["suggested label differs", fmtNumber(s.suggested_differs)],
      ["label-error score > 0.5", fmtNumber(s["label_error_above_0.5"])],
      ["outlier score > 99", fmtNumber(s.outlier_score_above_99)],
    ].flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })])
  );
  auditTable($("#audit-outliers"), view.outliers);
  auditTable($("#audit-errors"), view.label_errors);
  $("#audit-status").textContent = `succeeded: ${fmtNumber(s.images)} images scored`;
  $("#audit-report").hidden = false;
}

const AUDIT_COLUMNS = [
  ["Index", (r) => r.index],
  ["Label", (r) => r.label_name],
  ["nll (nats)", (r) => fmtNumber(r.nll, 4)],
  ["Outlier score", (r) => (r.outlier_score === null ? "–" : fmtNumber(r.outlier_score, 3))],
  ["Suggested", (r) => r.suggested_name],
  ["Label error", (r) => fmtNumber(r.label_error, 3)],
];

function auditTable(table, rows) {
  table.replaceChildren(
    el("thead", {}, el("tr", {}, AUDIT_COLUMNS.map(([name]) => el("th", { text: name })))),
    el("tbody", {}, rows.map((r) => el("tr", { dataset: { index: r.index } }, AUDIT_COLUMNS.map(([, cell]) => el("td", { text: cell(r) })))))
  );
}

// ------------------------------------------------------------------ tabs and start-up

function currentTab() {
  const tab = location.hash.replace("#", "");
  return ["models", "try", "jobs", "audit"].includes(tab) ? tab : "models";
}

async function showTab() {
  const tab = currentTab();
  for (const s of $$(".tab")) s.hidden = s.id !== `tab-${tab}`;
  for (const a of $$("nav a")) a.classList.toggle("active", a.dataset.tab === tab);
  if (tab === "jobs") startPolling();
  if (tab === "audit") fillAuditDatasets();
}

async function start() {
  updateTokenButton();
  $("#forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    updateTokenButton();
  });
  for (const [form, perClass, handler] of [
    [$("#try-form"), 4, generate],
    [$("#job-form"), 100, submitJob],
  ]) {
    buildRequestFields(form);
    buildCounts(form, perClass);
    form.addEventListener("submit", handler);
    $("select[name=model]", form).addEventListener("change", () => fillClassInputs(form));
  }
  $("#token-dialog").addEventListener("cancel", (e) => e.preventDefault()); // Esc: nothing works without it
  $("#job-detail-close").addEventListener("click", () => ($("#job-detail").hidden = true));
  $("#audit-form").addEventListener("submit", runAudit);
  $("#audit-model").addEventListener("change", auditModelChanged);
  window.addEventListener("hashchange", showTab);
  showTab();
  await showModels();
  for (const form of [$("#try-form"), $("#job-form")]) {
    fillModelSelect($("select[name=model]", form));
    fillClassInputs(form);
  }
  fillAuditModels();
  if (currentTab() === "audit") fillAuditDatasets();
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
