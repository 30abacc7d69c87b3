// The dashboard: one EventSource on /events (JSON objects with a "kind"), hand-drawn SVG charts.
// Each chart keeps the values it drew in its data-values attribute (the browser test reads it).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const HISTORY = 300; // points kept by the small gauge charts
const RUN_POINTS = 5000; // points kept by the run's charts
let runId = null;

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// Draws points [x, y] as a polyline scaled into the chart's viewBox, with min/max labels.
function draw(chart, points, opts = {}) {
  const [, , w, h] = chart.getAttribute("viewBox").split(" ").map(Number);
  const pad = { l: 44, r: 8, t: 8, b: opts.xName ? 16 : 6 };
  chart.replaceChildren();
  chart.dataset.values = JSON.stringify(points.map((p) => p[1]));
  chart.append(svg("line", { class: "axis", x1: pad.l, y1: h - pad.b, x2: w - pad.r, y2: h - pad.b }));
  if (points.length === 0) {
    const empty = svg("text", { x: w / 2, y: h / 2, "text-anchor": "middle" });
    empty.textContent = opts.empty || "no data yet";
    chart.append(empty);
    return;
  }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y0 = Math.min(opts.floor ?? Infinity, ...ys), y1 = Math.max(opts.limit ?? -Infinity, ...ys);
  if (y1 === y0) { y1 += 1; y0 = Math.min(y0, 0); }
  const sx = (x) => pad.l + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (w - pad.l - pad.r);
  const sy = (y) => h - pad.b - ((y - y0) / (y1 - y0)) * (h - pad.t - pad.b);
  if (opts.limit !== undefined) {
    chart.append(svg("line", { class: "limit", x1: pad.l, x2: w - pad.r, y1: sy(opts.limit), y2: sy(opts.limit) }));
  }
  chart.append(svg("polyline", { points: points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ") }));
  if (points.length === 1) chart.append(svg("circle", { cx: sx(xs[0]), cy: sy(ys[0]), r: 3 }));
  const label = (y, text) => { const t = svg("text", { x: 2, y }); t.textContent = text; chart.append(t); };
  label(pad.t + 8, fmt(y1));
  label(h - pad.b, fmt(y0));
  if (opts.xName) {
    for (const [x, anchor] of [[x0, "start"], [x1, "end"]]) {
      const t = svg("text", { x: sx(x), y: h - 2, "text-anchor": anchor });
      t.textContent = `${opts.xName} ${x}`;
      chart.append(t);
    }
  }
}

function fmt(v) {
  if (v === 0) return "0";
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3);
}

const series = { loss: [], reward: [], rate: [], inflight: [], stall: [] };
const keep = (points, point) => { points.push(point); if (points.length > RUN_POINTS) points.shift(); };
let tick = 0;

let redrawPending = false;
function redrawRun() { // at most once per frame, however fast events come
  if (redrawPending) return;
  redrawPending = true;
  requestAnimationFrame(() => { redrawPending = false; drawRun(); });
}

function drawRun() {
  draw($("loss-chart"), series.loss, { xName: "step" });
  draw($("reward-chart"), series.reward, { empty: "n/a: no reward yet", floor: 0, xName: "step" });
  draw($("rate-chart"), series.rate, { floor: 0, xName: "step" });
}

function setStatus(status, text) {
  $("status").dataset.status = status;
  $("status").textContent = text || status;
  const running = status === "running";
  $("start").disabled = running;
  $("stop").disabled = !running;
}

const handlers = {
  run(e) {
    if (e.status === "running") { // a new run, or the replay of this one after a reconnect
      runId = e.run_id;
      series.loss = []; series.reward = []; series.rate = [];
      drawRun();
      $("run-id").textContent = e.run_id;
      $("run-steps").textContent = e.steps;
      $("step").textContent = "0";
    }
    setStatus(e.status);
    $("message").textContent = e.error ? ` ${e.error}` : "";
  },
  step(e) {
    keep(series.loss, [e.step, e.loss]);
    if (e.steps_per_s !== null) keep(series.rate, [e.step, e.steps_per_s]);
    $("step").textContent = e.step;
    redrawRun();
  },
  reward(e) {
    keep(series.reward, [e.step, e.reward]);
    redrawRun();
  },
  gauges(e) {
    const total = Object.values(e.in_flight).reduce((a, b) => a + b, 0);
    $("inflight-total").textContent = total;
    $("inflight-max").textContent = e.max_in_flight;
    $("inflight-kinds").replaceChildren(...Object.entries(e.in_flight).map(([kind, n]) => {
      const li = document.createElement("li");
      li.innerHTML = `<code></code> <b></b> <span class="bar"></span>`;
      li.querySelector("code").textContent = kind;
      li.querySelector("b").textContent = n;
      li.querySelector(".bar").style.width = `${Math.min(n, 40) * 6}px`;
      return li;
    }));
    $("stall-max").textContent = e.max_loop_stall_ms.toFixed(1);
    $("stall-max").dataset.ms = e.max_loop_stall_ms;
    $("stall-now").textContent = e.loop_stall_ms.toFixed(1);
    $("stall-wall").textContent = e.max_wall_stall_ms.toFixed(1);
    $("stall-wall").dataset.ms = e.max_wall_stall_ms;
    tick += 1;
    series.inflight = [...series.inflight, [tick, total]].slice(-HISTORY);
    series.stall = [...series.stall, [tick, e.loop_stall_ms]].slice(-HISTORY);
    draw($("inflight-chart"), series.inflight, { floor: 0 });
    draw($("stall-chart"), series.stall, { floor: 0, limit: 50 });
  },
  job(e) {
    $("job-state").textContent = e.state;
    $("job-id").textContent = e.job_id ?? "(trainer given by URL)";
  },
  policy(e) {
    $("policy-published").textContent = e.published ?? "n/a";
    $("policy-served").textContent = e.served ?? "n/a";
  },
};

const source = new EventSource("/events");
source.onmessage = (message) => {
  const event = JSON.parse(message.data);
  handlers[event.kind]?.(event);
};
source.onerror = () => { $("message").textContent = " (reconnecting to the event stream…)"; };
source.onopen = () => { $("message").textContent = ""; };

// The app's token comes in the address's fragment (never sent to a server): kept for this tab,
// then taken out of the address bar.
const fragmentToken = new URLSearchParams(location.hash.slice(1)).get("token");
if (fragmentToken) {
  sessionStorage.setItem("token", fragmentToken);
  history.replaceState(null, "", location.pathname + location.search);
}
const token = sessionStorage.getItem("token") ?? "";

async function post(url, body) {
  const headers = { "content-type": "application/json", authorization: `Bearer ${token}` };
  const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body ?? {}) });
  const data = await response.json();
  if (!response.ok) $("message").textContent = ` ${data.detail}`;
  return data;
}

$("controls").addEventListener("submit", (ev) => {
  ev.preventDefault();
  post("/runs", { steps: Number($("steps").value), learning_rate: Number($("lr").value) });
});
$("stop").addEventListener("click", () => { if (runId !== null) post(`/runs/${runId}/stop`); });

drawRun();
