// Aviary dashboard. Plain JavaScript, no libraries. Everything that comes from the API is put
// into the page as text (textContent) or as numbers in SVG attributes, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

// Every state-changing request carries this header: the dashboard refuses one without it, and
// a page of another site cannot send it without a CORS preflight the dashboard never grants.
const CSRF = { "x-aviary-dashboard": "1" };

const SVG = "http://www.w3.org/2000/svg";

let whoami = null;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options));
  let body = {};
  try { body = await response.json(); } catch (_) { body = {}; }
  if (!response.ok) {
    const error = new Error(body.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function post(path, body, method) {
  return api(path, {
    method: method || "POST",
    headers: Object.assign({ "content-type": "application/json" }, CSRF),
    body: JSON.stringify(body || {}),
  });
}

function show(id) {
  for (const section of ["sign-in", "list", "rollout"]) $(section).hidden = section !== id;
}

function age(ms) {
  if (!ms) return "-";
  let s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${m % 60}m`;
  return `${Math.floor(h / 24)}d`;
}

// When the rollout entered its current step (the API carries no creation time).
function sinceMs(status) {
  return status.stepStartedAtMs || status.lastTransitionAtMs || 0;
}

function clock(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "-";
}

function stepText(r) {
  const plan = r.plan || [];
  return plan.length ? `${(r.status.step || 0) + 1}/${plan.length}` : "-";
}

function setBar(bar, weight) {
  bar.style.width = `${Math.max(0, Math.min(100, Number(weight) || 0))}%`;
}

function rolloutPath(ns, name) {
  return `${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;
}

// ---- sign-in ----------------------------------------------------------------------------------

function signInPage() {
  show("sign-in");
  $("sign-in-form").onsubmit = async (event) => {
    event.preventDefault();
    $("sign-in-error").textContent = "";
    try {
      await post("/api/session", { token: $("token").value });
      location.reload();
    } catch (error) {
      $("sign-in-error").textContent = error.message;
    }
  };
}

async function signOut() {
  try { await post("/api/session", {}, "DELETE"); } catch (_) { /* reloads either way */ }
  location.reload();
}

// ---- the list ---------------------------------------------------------------------------------

let listAges = [];

function listPage() {
  show("list");
  const params = new URLSearchParams(location.search);
  $("namespace").value = params.get("namespace") || "";
  $("phase").value = params.get("phase") || "";
  let source = null;
  const open = () => {
    if (source) source.close();
    const query = new URLSearchParams();
    if ($("namespace").value.trim()) query.set("namespace", $("namespace").value.trim());
    if ($("phase").value) query.set("phase", $("phase").value);
    const search = query.toString();
    history.replaceState(null, "", search ? `/?${search}` : "/");
    source = new EventSource(`/api/rollouts/stream?${search}`);
    source.addEventListener("rollouts", (event) => {
      $("list-error").textContent = "";
      renderList(JSON.parse(event.data).rollouts || []);
      $("list-live").textContent = `live, updated ${new Date().toLocaleTimeString()}`;
    });
    source.addEventListener("failure", (event) => {
      $("list-error").textContent = JSON.parse(event.data).error;
    });
    source.onerror = () => { $("list-live").textContent = "reconnecting…"; };
  };
  $("filters").onsubmit = (event) => { event.preventDefault(); open(); };
  $("namespace").onchange = open;
  $("phase").onchange = open;
  open();
  setInterval(() => { for (const [cell, ms] of listAges) cell.textContent = age(ms); }, 1000);
}

function renderList(rollouts) {
  const body = $("rollouts").querySelector("tbody");
  body.replaceChildren();
  listAges = [];
  for (const r of rollouts) {
    const status = r.status || {};
    const row = el("tr");
    row.dataset.rollout = `${r.ref.namespace}/${r.ref.name}`;
    row.append(el("td", r.ref.namespace));
    const name = el("td");
    const link = el("a", r.ref.name);
    link.href = `/rollouts/${rolloutPath(r.ref.namespace, r.ref.name)}`;
    name.append(link);
    row.append(name, el("td", r.strategy));
    row.append(el("td", status.phase, `phase phase-${status.phase}`));
    const weight = el("td", null, "weight");
    const bar = el("span", null, "bar");
    const fill = el("span");
    setBar(fill, status.canaryWeight);
    bar.append(fill);
    weight.append(bar, el("span", ` ${status.canaryWeight || 0}%`, "weight-text"));
    row.append(weight, el("td", stepText(r), "step"), el("td", status.failedChecks || 0, "failed"));
    const since = sinceMs(status);
    const ageCell = el("td", age(since), "age");
    listAges.push([ageCell, since]);
    row.append(ageCell);
    body.append(row);
  }
  $("list-empty").hidden = rollouts.length > 0;
}

// ---- one rollout ------------------------------------------------------------------------------

const ACTIONS = {
  "promote": "Promote (skip the current step of)",
  "promote-full": "Promote fully (skip every remaining step and analysis of)",
  "pause": "Pause",
  "resume": "Resume",
  "approve": "Approve the manual gate of",
  "set-weight": "Hold at an exact canary weight",
  "retry": "Retry",
  "abort": "Abort (roll back to the primary)",
};

let current = null;
const seenEvents = new Set();
// metric name -> "generation/step" -> point
const points = new Map();

function rolloutPage(ns, name) {
  show("rollout");
  $("title").textContent = `${ns}/${name}`;
  document.title = `${ns}/${name} · Aviary`;
  const path = rolloutPath(ns, name);
  if (whoami && whoami.role === "operator") {
    $("actions").hidden = false;
    for (const button of $("actions").querySelectorAll("button")) {
      button.onclick = () => confirmAction(path, button.dataset.action);
    }
  }
  api(`/api/rollouts/${path}`).then(renderRollout).catch((error) => {
    $("rollout-error").textContent = error.message;
  });
  const source = new EventSource(`/api/rollouts/${path}/watch`);
  source.onopen = () => { $("live").textContent = "live"; };
  source.addEventListener("rollout", (event) => renderRollout(JSON.parse(event.data)));
  source.addEventListener("audit", (event) => addEvent(JSON.parse(event.data)));
  source.addEventListener("failure", (event) => {
    const text = JSON.parse(event.data).error;
    $("live").textContent = `not live: ${text}`;
    if (/^(NotFound|Unauthenticated|PermissionDenied|InvalidArgument)/.test(text)) source.close();
  });
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED) $("live").textContent = "reconnecting…";
  };
  setInterval(() => { if (current) renderAges(current); }, 1000);
}

function renderAges(r) {
  const status = r.status || {};
  const since = sinceMs(status);
  $("message").textContent = (status.message || "-") + (since ? ` (step started ${age(since)} ago)` : "");
}

function renderRollout(r) {
  current = r;
  const status = r.status || {};
  $("rollout-error").textContent = "";
  $("phase-now").textContent = status.phase;
  $("phase-now").className = `phase-${status.phase}`;
  setBar($("weight-bar"), status.canaryWeight);
  $("weight").textContent = `${status.canaryWeight || 0}% canary, ${status.primaryWeight || 0}% primary` +
    (status.mirrorWeight ? `, mirror ${status.mirrorWeight}%` : "");
  $("step").textContent = stepText(r);
  $("strategy").textContent = r.strategy;
  $("generation").textContent = status.generation;
  $("failed").textContent = status.failedChecks || 0;
  $("halt").textContent = status.haltReason || "-";
  $("gates").textContent = (status.waitingGates || []).join(", ") || "-";
  renderAges(r);

  const plan = $("plan").querySelector("tbody");
  plan.replaceChildren();
  (r.plan || []).forEach((s, i) => {
    const row = el("tr", null, i === status.step ? "current" : "");
    row.append(el("td", i === status.step ? `▶ ${i + 1}` : i + 1), el("td", `${s.canaryWeight}%`),
      el("td", `${s.primaryWeight}%`), el("td", s.mirror ? `${s.mirrorWeight}%` : "-"),
      el("td", s.matched ? "yes" : "-"));
    plan.append(row);
  });

  const ingresses = $("ingresses").querySelector("tbody");
  ingresses.replaceChildren();
  for (const i of status.ingresses || []) {
    const row = el("tr");
    row.append(el("td", i.ingress), el("td", `${i.primaryWeight}%`), el("td", `${i.canaryWeight}%`),
      el("td", i.mirrorPercent ? `${i.mirrorPercent}%` : "-"), el("td", clock(i.confirmedAtMs)));
    ingresses.append(row);
  }

  const verdict = status.lastVerdict;
  if (verdict) {
    for (const m of verdict.metrics || []) {
      addPoint(m.name, verdict.generation, verdict.step, m.value, m.min, m.max, m.primaryValue, m.outcome);
    }
  }
  renderCharts();
}

function addPoint(name, generation, step, value, min, max, primary, outcome) {
  if (!points.has(name)) points.set(name, new Map());
  const key = `${generation}/${step}`;
  const old = points.get(name).get(key) || {};
  const keep = (a, b) => (a === undefined || a === null ? b : a);
  points.get(name).set(key, {
    generation, step,
    value: keep(value, old.value), min: keep(min, old.min), max: keep(max, old.max),
    primary: keep(primary, old.primary), outcome: outcome || old.outcome,
  });
}

function addEvent(event) {
  if (typeof event !== "object" || event === null) {
    $("timeline").prepend(el("li", String(event)));
    return;
  }
  if (event.id && seenEvents.has(event.id)) return;
  if (event.id) seenEvents.add(event.id);
  const d = event.data || {};
  const kind = String(event.type || "").replace("dev.aviary.rollout.", "");
  let text = `${event.time || ""}  ${kind}  gen ${d.generation ?? "?"} step ${(d.step ?? 0) + 1}` +
    `  canary ${d.canaryWeight ?? 0}%  ${d.phase || ""}`;
  if (d.reason) text += `  ${d.reason}`;
  if (d.actor) text += `  by ${d.actor}`;
  const item = el("li", text, `event event-${kind}`);
  $("timeline").prepend(item);
  for (const m of d.metrics || []) {
    addPoint(m.name, d.generation, d.step, m.value, m.min, m.max, undefined, m.outcome);
  }
  renderCharts();
}

// One SVG per metric: the canary's value at each analysed step of the current generation, the
// primary's where the metric is judged against it, and the threshold range as a band.
function renderCharts() {
  const charts = $("charts");
  charts.replaceChildren();
  const generation = current && current.status ? current.status.generation : undefined;
  for (const [name, byStep] of [...points.entries()].sort()) {
    const data = [...byStep.values()]
      .filter((p) => generation === undefined || p.generation === generation)
      .sort((a, b) => a.step - b.step);
    if (!data.length) continue;
    charts.append(chart(name, data));
  }
}

function chart(name, data) {
  const W = 300, H = 160, L = 46, R = 10, T = 10, B = 26;
  const numbers = [];
  for (const p of data) for (const v of [p.value, p.primary, p.min, p.max]) if (Number.isFinite(v)) numbers.push(v);
  let lo = numbers.length ? Math.min(...numbers) : 0;
  let hi = numbers.length ? Math.max(...numbers) : 1;
  if (hi === lo) { hi += 1; lo -= 1; }
  const pad = (hi - lo) * 0.1;
  lo -= pad; hi += pad;
  const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  // Points stay clear of the axis and the right edge, so their step labels fit.
  const X0 = L + 22, X1 = W - R - 22;
  const x = (i) => (data.length === 1 ? (X0 + X1) / 2 : X0 + (i * (X1 - X0)) / (data.length - 1));
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  root.dataset.metric = name;
  const last = data[data.length - 1];
  const top = Number.isFinite(last.max) ? y(last.max) : T;
  const bottom = Number.isFinite(last.min) ? y(last.min) : H - B;
  if (Number.isFinite(last.min) || Number.isFinite(last.max)) {
    root.append(svg("rect", { class: "range", x: L, y: Math.min(top, bottom), width: W - L - R,
      height: Math.abs(bottom - top) }));
  }
  root.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  for (const v of [lo + pad, hi - pad]) {
    const label = svg("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end" });
    label.textContent = Number(v.toPrecision(4)).toString();
    root.append(label);
  }
  const canary = data.map((p, i) => (Number.isFinite(p.value) ? `${x(i)},${y(p.value)}` : null)).filter(Boolean);
  if (canary.length > 1) {
    root.append(svg("polyline", { points: canary.join(" "), fill: "none", stroke: "#d9822b", "stroke-width": 1.5 }));
  }
  data.forEach((p, i) => {
    const label = svg("text", { x: x(i), y: H - 8, "text-anchor": "middle" });
    label.textContent = `step ${p.step + 1}`;
    root.append(label);
    if (Number.isFinite(p.primary)) {
      root.append(svg("circle", { class: "primary", cx: x(i), cy: y(p.primary), r: 5 }));
    }
    if (Number.isFinite(p.value)) {
      const dot = svg("circle", { class: p.outcome === "Fail" ? "canary fail" : "canary", cx: x(i), cy: y(p.value), r: 4 });
      const tip = svg("title");
      tip.textContent = `step ${p.step + 1}: ${p.value}${Number.isFinite(p.primary) ? ` (primary ${p.primary})` : ""} ${p.outcome || ""}`;
      dot.append(tip);
      root.append(dot);
    }
  });
  const figure = el("figure");
  figure.append(el("figcaption", name), root);
  return figure;
}

function confirmAction(path, action) {
  const dialog = $("confirm");
  $("confirm-text").textContent = `${ACTIONS[action] || action} ${decodeURIComponent(path)}?`;
  $("weight-field").hidden = action !== "set-weight";
  $("reason").value = "";
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") return;
    const body = { reason: $("reason").value };
    if (action === "set-weight") body.weight = Number($("weight-input").value);
    $("action-result").textContent = "";
    $("action-error").textContent = "";
    try {
      const answer = await post(`/api/rollouts/${path}/${action}`, body);
      $("action-result").textContent = answer.message;
    } catch (error) {
      $("action-error").textContent = error.message;
    }
  };
  dialog.showModal();
}

// ---- start ------------------------------------------------------------------------------------

async function start() {
  $("sign-out").onclick = signOut;
  try {
    whoami = await api("/api/whoami");
  } catch (error) {
    if (error.status === 401) return signInPage();
    whoami = null;
    $("who").textContent = `control API: ${error.message}`;
  }
  if (whoami) {
    $("who").textContent = `${whoami.identity} (${whoami.role})`;
    $("sign-out").hidden = !whoami.signedIn;
  }
  const match = location.pathname.match(/^\/rollouts\/([^/]+)\/([^/]+)$/);
  if (match) {
    rolloutPage(decodeURIComponent(match[1]), decodeURIComponent(match[2]));
  } else {
    listPage();
  }
}

start();
