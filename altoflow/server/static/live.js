"use strict";
// altoflow's live page (docs/serving.md, "The live page"). It reads the pipeline from
// GET /v1/graph, builds a form from its request schema, sends the form to POST /v1/run as JSON,
// reads the NDJSON answer as it streams and marks each event on its stage's row, and polls
// GET /metrics for each stage's running and waiting invocations. Plain DOM, no libraries.

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const METRICS_EVERY_MS = 1000; // while no request of this page runs
const METRICS_RUNNING_MS = 500; // while one does, so that its stages' load shows on the timeline

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.dataset[key.slice(5)] = value;
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

function s(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

const clip = (text, n) => (text.length > n ? text.slice(0, n - 1) + "…" : text);
const levels = (names) => (names.length ? names.join("·") : "request");
const ancestryText = (a) =>
  Object.entries(a || {}).map(([k, v]) => `${k}=${v}`).join(" ") || "depth 0";

function ms(t) {
  return t < 1000 ? `${Math.round(t)} ms` : `${(t / 1000).toFixed(t < 10000 ? 2 : 1)} s`;
}

// -- the graph ---------------------------------------------------------------------------------

// A stage's column: 0 without upstream stages, else one past its deepest input.
function depths(stages) {
  const byName = new Map(stages.map((st) => [st.name, st]));
  const memo = new Map();
  const depth = (st) => {
    if (!memo.has(st.name)) {
      const ups = st.inputs.filter((n) => byName.has(n)).map((n) => depth(byName.get(n)));
      memo.set(st.name, ups.length ? 1 + Math.max(...ups) : 0);
    }
    return memo.get(st.name);
  };
  stages.forEach(depth);
  return memo;
}

const BOX = { w: 156, h: 84, dx: 30, dy: 14, band: 36, pad: 6 };
const boxes = new Map(); // stage name -> {group, replicas, live, stage}

// Columns by depth, left to right; when they do not fit the page's width they wrap into bands,
// one under the other, so that a long chain stays legible instead of shrinking.
function drawGraph(graph) {
  const depthOf = depths(graph.stages);
  const columns = [];
  for (const st of graph.stages) (columns[depthOf.get(st.name)] ??= []).push(st);
  const fit = Math.floor(($("graph").clientWidth - 2 * BOX.pad + BOX.dx) / (BOX.w + BOX.dx));
  const perBand = Math.max(1, Math.min(columns.length, fit));
  const tallest = Math.max(...columns.map((c) => c.length));
  const bandHeight = tallest * (BOX.h + BOX.dy) - BOX.dy;
  const bands = Math.ceil(columns.length / perBand);
  const width = perBand * (BOX.w + BOX.dx) - BOX.dx + 2 * BOX.pad;
  const height = bands * (bandHeight + BOX.band) - BOX.band + 2 * BOX.pad;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
  const defs = s("defs");
  defs.append(arrowHead());
  svg.append(defs);
  const at = new Map();
  columns.forEach((column, i) => column.forEach((st, j) => {
    const band = Math.floor(i / perBand);
    const offset = ((tallest - column.length) * (BOX.h + BOX.dy)) / 2;
    at.set(st.name, {
      band,
      x: BOX.pad + (i % perBand) * (BOX.w + BOX.dx),
      y: BOX.pad + band * (bandHeight + BOX.band) + offset + j * (BOX.h + BOX.dy),
    });
  }));
  for (const st of graph.stages) {
    for (const input of st.inputs.filter((n) => at.has(n))) {
      svg.append(s("path", { class: "edge", "marker-end": "url(#arrow)",
                             d: edge(at.get(input), at.get(st.name)) }));
    }
  }
  const outputs = new Set(graph.outputs);
  for (const st of graph.stages) svg.append(stageBox(st, at.get(st.name), outputs.has(st.name)));
  $("graph").replaceChildren(svg);
}

// An edge's path: right side to left side in one band, bottom to top into a later band.
function edge(a, b) {
  if (a.band === b.band) {
    const x1 = a.x + BOX.w, y1 = a.y + BOX.h / 2, x2 = b.x - 2, y2 = b.y + BOX.h / 2;
    const bend = Math.max(12, (x2 - x1) / 2);
    return `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
  }
  const x1 = a.x + BOX.w / 2, y1 = a.y + BOX.h, x2 = b.x + BOX.w / 2, y2 = b.y - 2;
  const bend = Math.min(BOX.band * 2, (y2 - y1) / 2);
  return `M${x1},${y1} C${x1},${y1 + bend} ${x2},${y2 - bend} ${x2},${y2}`;
}

function arrowHead() {
  const marker = s("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
    orient: "auto",
  });
  marker.append(s("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9aa4b1" }));
  return marker;
}

function stageBox(st, { x, y }, isOutput) {
  const group = s("g", { class: `box${isOutput ? " output" : ""}`, "data-stage": st.name });
  const key = st.route_key === null ? "load-balanced" : `key (${["request", ...st.route_key].join(", ")})`;
  group.append(
    s("title", {}, `${st.name}: ${st.kind}${isOutput ? ", output" : ""}; levels ` +
      `${levels(st.levels_in)} → ${levels(st.levels_out)}; ${key}; ${st.replicas} replica(s)`),
    s("rect", { x, y, width: BOX.w, height: BOX.h }),
    s("text", { x: x + 8, y: y + 17, class: "name" }, clip(st.name, isOutput ? 14 : 20)),
  );
  if (isOutput) group.append(s("text", { x: x + BOX.w - 8, y: y + 17, class: "badge" }, "output"));
  const line = (n, text, cls = "") =>
    s("text", { x: x + 8, y: y + 17 + 15 * n, class: cls }, clip(text, 25));
  const replicas = line(1, `${st.kind} · ×${st.replicas}`);
  const live = line(4, "running – · waiting –", "live");
  group.append(replicas, line(2, `${levels(st.levels_in)} → ${levels(st.levels_out)}`),
               line(3, key), live);
  boxes.set(st.name, { group, replicas, live, stage: st });
  return group;
}

// -- metrics: GET /metrics, Prometheus' text format --------------------------------------------

// {family name: [{labels, value}]} of the sample lines of a text exposition.
function parsePrometheus(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue; // a comment (# HELP, # TYPE) or a blank line
    const labels = {};
    for (const [, name, raw] of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[name] = raw.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value: Number(m[3]) });
  }
  return out;
}

function byStage(families, name) {
  return new Map((families.get(name) || []).map((x) => [x.labels.stage, x.value]));
}

function showMetrics(families, desired) {
  const running = byStage(families, "altoflow_stage_in_flight");
  const waiting = byStage(families, "altoflow_stage_queue_depth");
  const live = byStage(families, "altoflow_replicas_live");
  for (const [name, box] of boxes) {
    const r = running.get(name) ?? 0, w = waiting.get(name) ?? 0;
    box.live.textContent = `running ${r} · waiting ${w}`;
    box.group.dataset.inFlight = r;
    box.group.dataset.queued = w;
    box.group.classList.toggle("busy", r + w > 0);
    const want = desired.get(name) ?? box.stage.replicas; // a rescale changes it
    const up = live.has(name) ? `${live.get(name)}/${want} up` : `×${want}`;
    box.replicas.textContent = clip(`${box.stage.kind} · ${up}`, 25);
  }
  if (current) sampleLoad(running, waiting);
  const requests = families.get("altoflow_requests_in_flight");
  $("requests-in-flight").textContent = requests ? requests[0].value : "–";
}

let stagesReported = true; // until GET /v1/stages says this server has no such route

// Each stage's desired replica count from GET /v1/stages (a rescale changes it; /v1/graph has
// the count the server started with): empty where the server does not report it.
async function desiredReplicas() {
  if (!stagesReported) return new Map();
  const resp = await fetch("/v1/stages");
  if (!resp.ok) {
    stagesReported = resp.status !== 404;
    return new Map();
  }
  return new Map((await resp.json()).stages.map((s) => [s.stage, s.desired]));
}

async function pollMetrics() {
  try {
    const resp = await fetch("/metrics");
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const families = parsePrometheus(await resp.text());
    showMetrics(families, await desiredReplicas());
    $("metrics-status").textContent = `metrics: ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    $("metrics-status").textContent = `metrics: unavailable (${err.message})`;
  }
  setTimeout(pollMetrics, current ? METRICS_RUNNING_MS : METRICS_EVERY_MS);
}

// -- the form, from the request's JSON schema ----------------------------------------------------

const fields = []; // {name, required, read: () => value or undefined to leave the field out}

function resolve(schema, prop) {
  const ref = prop && prop.$ref;
  if (ref && ref.startsWith("#/$defs/")) return resolve(schema, schema.$defs[ref.slice(8)]);
  if (prop && prop.anyOf) { // Optional[X]: X, where null is what leaving it empty means
    const kinds = prop.anyOf.map((p) => resolve(schema, p)).filter((p) => p.type !== "null");
    if (kinds.length === 1) return { ...kinds[0], default: prop.default };
  }
  return prop || {};
}

function kindOf(p) {
  if (p.enum && p.enum.every((v) => typeof v === "string")) return "choice";
  if (["string", "number", "integer", "boolean"].includes(p.type)) return p.type;
  if (p.type === "array" && p.items && p.items.type === "string" && !p.items.enum) return "lines";
  return "json";
}

const HINTS = { lines: "one per line", json: "JSON", integer: "integer", number: "number",
                string: "text", boolean: "yes / no", choice: "one of" };

function buildForm(schema) {
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const box = $("fields");
  box.replaceChildren();
  if (!Object.keys(props).length) {
    box.append(h("p", { class: "hint", text: "This pipeline takes no request fields." }));
  }
  for (const [name, raw] of Object.entries(props)) {
    const p = resolve(schema, raw);
    const kind = kindOf(p);
    const id = `field-${name}`;
    const has = p.default !== undefined && p.default !== null;
    let input;
    if (kind === "boolean") {
      input = h("input", { type: "checkbox", id, checked: has && p.default });
    } else if (kind === "choice") {
      input = h("select", { id }, ...p.enum.map((v) => h("option", { value: v, text: v })));
      if (has) input.value = p.default;
    } else if (kind === "lines" || kind === "json") {
      const value = !has ? "" : kind === "lines" ? p.default.join("\n") : JSON.stringify(p.default);
      input = h("textarea", { id, rows: 3, value, spellcheck: false });
    } else {
      input = h("input", {
        id, type: kind === "string" ? "text" : "number", value: has ? p.default : "",
        step: kind === "integer" ? "1" : "any",
      });
    }
    input.name = name;
    const hint = kind === "choice" ? `one of ${p.enum.join(", ")}` : HINTS[kind];
    box.append(
      h("label", { htmlFor: id, title: p.description || "" }, name,
        h("span", { class: "type", text: ` ${hint}${required.has(name) ? "" : ", optional"}` })),
      input);
    fields.push({ name, read: reader(name, kind, input, required.has(name)) });
  }
}

function reader(name, kind, input, required) {
  return () => {
    if (kind === "boolean") return input.checked;
    const text = input.value;
    if (text.trim() === "" && (kind !== "string" || !required)) return undefined;
    if (kind === "number" || kind === "integer") return Number(text);
    if (kind === "lines") return text.split("\n").map((l) => l.trim()).filter(Boolean);
    if (kind === "json") {
      try { return JSON.parse(text); }
      catch (err) { throw new Error(`field ${name} is not valid JSON (${err.message})`); }
    }
    return text;
  };
}

function formBody() {
  const body = {};
  for (const f of fields) {
    const value = f.read();
    if (value !== undefined) body[f.name] = value;
  }
  return body;
}

function requestBody() {
  if (!$("raw").open) return formBody();
  try { return JSON.parse($("raw-json").value || "{}"); }
  catch (err) { throw new Error(`the raw JSON is not valid JSON (${err.message})`); }
}

// -- the timeline of a request's events ----------------------------------------------------------

const REQUEST_ROW = "(request)";
let rows = new Map(); // row name -> {track, count}
let marks = []; // {node, t, until}: an event's mark, or a span of load (until = its end)
let current = null; // the running request: {start, outputs, ended, sampled}
let shown = 100; // the ms the timeline's width stands for; grows with the request
let partials = new Map(); // "stage ancestry" -> <pre>

function drawRows(graph) {
  const depthOf = depths(graph.stages);
  const order = [...graph.stages].sort((a, b) => depthOf.get(a.name) - depthOf.get(b.name));
  const outputs = new Set(graph.outputs);
  const timeline = $("timeline");
  timeline.replaceChildren();
  rows = new Map();
  for (const name of [...order.map((st) => st.name), REQUEST_ROW]) {
    const quiet = name !== REQUEST_ROW && !outputs.has(name);
    const count = h("span", { class: "count" });
    const label = h("div", { class: `row-name${quiet ? " quiet" : ""}`, text: name }, count);
    if (quiet) label.title = "not an output stage: only its errors and partial outputs reach the client";
    const track = h("div", { class: "track", "data-row": name });
    timeline.append(label, track);
    rows.set(name, { track, count, n: 0 });
  }
  timeline.append(h("div", { class: "axis" }, h("span", { text: "0" }),
                    h("span", { id: "axis-mid" }), h("span", { id: "axis-end" })));
  rescale(100);
}

function resetTimeline() {
  for (const row of rows.values()) { row.track.replaceChildren(); row.n = 0; row.count.textContent = ""; }
  marks = [];
  partials = new Map();
  $("partials").replaceChildren();
  $("detail").hidden = true;
  rescale(100);
}

function rescale(ms_) {
  shown = ms_;
  for (const m of marks) {
    m.node.style.left = `${(100 * m.t) / shown}%`;
    if (m.until !== undefined) m.node.style.width = `${(100 * (m.until - m.t)) / shown}%`;
  }
  $("axis-mid").textContent = ms(shown / 2);
  $("axis-end").textContent = ms(shown);
}

function addMark(rowName, t, type, title, detail) {
  const row = rows.get(rowName) || rows.get(REQUEST_ROW);
  if (t > shown * 0.95) rescale(Math.max(t * 1.5, shown * 2));
  const node = h("button", { type: "button", class: `mark ${type}`, title: `${title} · at ${ms(t)}`,
                             "data-type": type });
  node.style.left = `${(100 * t) / shown}%`;
  node.addEventListener("click", () => {
    document.querySelectorAll(".mark.selected").forEach((n) => n.classList.remove("selected"));
    node.classList.add("selected");
    showDetail(`${title} · at ${ms(t)}\n\n${detail}`, type === "error");
  });
  row.track.append(node);
  row.n += 1;
  row.count.textContent = ` (${row.n})`;
  marks.push({ node, t });
}

// The gauges of a poll during a run, as a shaded span on each busy stage's row since the poll
// before (they count every request the server runs, not only this page's).
function sampleLoad(running, waiting) {
  const t = performance.now() - current.start;
  const since = current.sampled;
  current.sampled = t;
  if (since === undefined) return;
  for (const [name, row] of rows) {
    const r = running.get(name) ?? 0, w = waiting.get(name) ?? 0;
    if (r + w === 0) continue;
    const node = h("div", { class: "load", title: `${name}: running ${r} · waiting ${w} at ${ms(t)}`,
                            "data-running": r, "data-waiting": w });
    node.style.opacity = Math.min(1, 0.35 + 0.15 * (r + w));
    row.track.prepend(node);
    marks.push({ node, t: since, until: t });
  }
  if (t > shown * 0.95) rescale(Math.max(t * 1.5, shown * 2));
  else rescale(shown);
}

function showDetail(text, bad) {
  const pre = $("detail");
  pre.textContent = text;
  pre.classList.toggle("bad", bad);
  pre.hidden = false;
}

function status(text, cls = "") {
  $("run-status").textContent = text;
  $("run-status").className = cls;
}

const pretty = (v) => (typeof v === "string" ? v : JSON.stringify(v, null, 2));

// One NDJSON line of the answer, arrived t ms after the request was sent.
function onEvent(line, t, run) {
  let ev;
  try { ev = JSON.parse(line); }
  catch (err) { // e.g. a NaN, which Python writes and JSON.parse refuses
    addMark(REQUEST_ROW, t, "error", "a line that is not strict JSON", line);
    return;
  }
  const where = `${ev.stage} (${ancestryText(ev.ancestry)})`;
  if (ev.type === "output") {
    run.outputs += 1;
    addMark(ev.stage, t, "output", `${where}: ${clip(pretty(ev.value).replace(/\s+/g, " "), 80)}`,
            pretty(ev.value));
  } else if (ev.type === "partial") {
    addMark(ev.stage, t, "partial", `${where}: partial`, String(ev.delta));
    partialText(where).textContent += String(ev.delta);
  } else if (ev.type === "error") {
    run.ended = "error";
    const text = `${ev.error}${ev.traceback ? `\n\n${ev.traceback}` : ""}`;
    addMark(ev.stage ?? REQUEST_ROW, t, "error", ev.stage ? `${where}: error` : "error", text);
    status(`${ev.stage ? `stage ${ev.stage} (${ancestryText(ev.ancestry)}) failed: ` : ""}` +
           `${ev.error} · ${ms(t)}`, "bad");
    showDetail(text, true);
  } else if (ev.type === "done") {
    run.ended = "done";
    addMark(REQUEST_ROW, t, "done", "done", `request ${ev.request_id}`);
    status(`done in ${ms(t)} · ${run.outputs} output(s) · request ${ev.request_id}`, "good");
  } else { // an event type this page does not know yet: shown, not dropped
    addMark(ev.stage ?? REQUEST_ROW, t, "partial", `${ev.type} event`, line);
  }
}

// After the request ended, its recorded timeline (GET /v1/requests/{id}/timeline, where the
// server keeps one) as a bar per invocation on its stage's row, from dispatch to acknowledgement.
// Its times count from the request's admission, the marks' from the moment the page sent it.
async function drawRecorded(requestId) {
  let doc;
  try {
    const resp = await fetch(`/v1/requests/${encodeURIComponent(requestId)}/timeline`);
    if (!resp.ok) return; // a server without timelines, or one that no longer has this request
    doc = await resp.json();
  } catch (err) {
    return;
  }
  for (const inv of doc.invocations || []) {
    const row = rows.get(inv.stage);
    if (!row || typeof inv.start_s !== "number") continue;
    const t = 1000 * inv.start_s;
    const until = 1000 * (inv.end_s ?? doc.duration_s ?? inv.start_s);
    const outputs = (inv.outputs_s || []).length;
    const node = h("div", {
      class: `span ${inv.status || "open"}`, "data-kind": inv.kind,
      title: `${inv.stage} (${ancestryText(inv.ancestry)}): ${inv.kind} on replica ` +
             `${inv.replica}, ${ms(t)} to ${ms(until)}, ${outputs} output(s), ` +
             `${inv.status ?? "not acknowledged"}`,
    });
    row.track.prepend(node);
    marks.push({ node, t, until });
  }
  rescale(Math.max(shown, 1050 * (doc.duration_s || 0)));
}

function partialText(where) {
  if (!partials.has(where)) {
    const pre = h("pre", { class: "partial-text" });
    $("partials").append(h("div", {}, h("div", { class: "hint", text: `${where}, as it is written` }), pre));
    partials.set(where, pre);
  }
  return partials.get(where);
}

async function readLines(body, onLine) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      if (line.trim()) onLine(line);
    }
  }
  if (buffer.trim()) onLine(buffer);
}

async function submit(event) {
  event.preventDefault();
  let body;
  try { body = requestBody(); }
  catch (err) { status(err.message, "bad"); return; }
  resetTimeline();
  const start = performance.now();
  const run = { start, outputs: 0, ended: null, sampled: undefined };
  current = run;
  document.body.dataset.run = "running";
  $("run").disabled = true;
  status("running…");
  try {
    const resp = await fetch("/v1/run", {
      method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", Accept: "application/x-ndjson" },
    });
    if (!resp.ok) {
      const text = await resp.text();
      let answer = text;
      try { answer = JSON.parse(text); } catch (err) { /* not JSON: shown as it is */ }
      run.ended = "refused";
      status(`HTTP ${resp.status}: ${clip(String(answer.detail ?? text), 160)}`, "bad");
      showDetail(`HTTP ${resp.status}\n\n${pretty(answer)}`, true);
    } else {
      await readLines(resp.body, (line) => onEvent(line, performance.now() - start, run));
      if (!run.ended) status("the answer ended without a done or error line", "bad");
      else await drawRecorded(resp.headers.get("X-Request-Id"));
    }
  } catch (err) {
    status(`the request failed: ${err.message}`, "bad");
  } finally {
    current = null;
    document.body.dataset.run = run.ended || "broken";
    $("run").disabled = false;
  }
}

function openRaw() {
  if ($("raw").open && !$("raw-json").value.trim()) {
    try { $("raw-json").value = JSON.stringify(formBody(), null, 2); }
    catch (err) { $("raw-json").value = "{}"; }
  }
}

async function main() {
  let graph;
  try {
    const resp = await fetch("/v1/graph");
    if (!resp.ok) throw new Error(`GET /v1/graph answered HTTP ${resp.status}`);
    graph = await resp.json();
  } catch (err) {
    $("graph").textContent = `Cannot read the pipeline: ${err.message}`;
    return;
  }
  $("server-name").textContent = location.host;
  document.title = `altoflow · ${location.host}`;
  drawGraph(graph);
  buildForm(graph.request_schema || {});
  drawRows(graph);
  $("request-form").addEventListener("submit", submit);
  $("raw").addEventListener("toggle", openRaw);
  window.addEventListener("resize", () => drawGraph(graph)); // the bands follow the width
  document.body.dataset.run = "idle";
  pollMetrics();
}

main();
