// The workbench page's behaviour: the blend slider, grade corrections, the Pareto chart.
// Catalog strings are only ever read from and written to the DOM as text (textContent, dataset), never as
// markup, so a product title cannot become script. The server rendered every list; this script reorders
// and annotates what is there.
"use strict";

const WB = (window.__wb = { ready: null, rerank: [], saves: [], errors: 0 });

function status(msg) {
  document.getElementById("wb-status").textContent = msg;
}

// --- the token: typed, or handed over in the URL fragment (#token=...), which no server ever receives ---
function initToken() {
  const box = document.getElementById("wb-token");
  const m = /(?:^|[#&])token=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("wb-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  if (box) {
    box.value = sessionStorage.getItem("wb-token") || "";
    box.addEventListener("change", () => sessionStorage.setItem("wb-token", box.value));
  }
}

// --- the slider: re-score each result from its own attributions, reorder ---------------------------------
function whatIf(li, w) {
  const d = li.dataset;
  return +d.bias + 2 * (1 - w) * +d.content + 2 * w * +d.engagement + +d.product;
}

function rerank(w) {
  const t0 = performance.now();
  for (const ol of document.querySelectorAll('ol.results[data-model="true"]')) {
    const items = Array.from(ol.children).filter((li) => li.dataset.bias !== undefined);
    // as the service orders: cross-encoder-scored results first, then by score, ties as served
    const scored = items.map((li) => [w === 0.5 ? +li.dataset.score : whatIf(li, w), +li.dataset.rank,
      +li.dataset.phase, li]);
    scored.sort((a, b) => b[2] - a[2] || b[0] - a[0] || a[1] - b[1]);
    const frag = document.createDocumentFragment();
    scored.forEach(([s, , , li], n) => {
      li.querySelector(".rank").textContent = String(n + 1);
      li.querySelector(".score").textContent = s.toFixed(4);
      frag.appendChild(li);
    });
    ol.appendChild(frag);
  }
  void document.body.offsetHeight; // layout included in the time
  WB.rerank.push(performance.now() - t0);
  document.body.dataset.blend = String(w);
  markPareto(w);
}

function initSlider() {
  const s = document.getElementById("wb-blend");
  const out = document.getElementById("wb-blend-value");
  s.addEventListener("input", () => {
    const w = Math.round(+s.value * 100) / 100;
    out.textContent = w.toFixed(2);
    rerank(w);
  });
}

// --- the Pareto front, with the slider's point ----------------------------------------------------------
let PARETO = null;

// The label blend (content weight, as tuned) a slider position stands for: 0.5 is the model's own
// operating point, 0 all content, 1 all engagement, linear in between.
function blendAt(w, op) {
  return w <= 0.5 ? op + (1 - op) * (0.5 - w) / 0.5 : op * (1 - w) / 0.5;
}

function nearestFront(w) {
  const front = PARETO.points.filter((p) => p.pareto);
  const pts = front.length ? front : PARETO.points;
  const op = PARETO.operating_blend ?? 0.5;
  const b = blendAt(w, op);
  return pts.reduce((best, p) =>
    Math.abs((p.blend_weight ?? op) - b) < Math.abs((best.blend_weight ?? op) - b) ? p : best);
}

function markPareto(w) {
  if (!PARETO || !PARETO.points.length || !window.Plotly) return;
  const p = nearestFront(w);
  document.getElementById("wb-pareto").dataset.current = String(p.number);
  window.Plotly.restyle("wb-pareto", { x: [[p.content]], y: [[p.engagement]] }, [2]);
}

function drawPareto() {
  PARETO = JSON.parse(document.getElementById("wb-pareto-data").textContent);
  const el = document.getElementById("wb-pareto");
  if (!PARETO.points.length) {
    el.textContent = "No tuning trials in this run (reports/trials.csv).";
    return;
  }
  const front = PARETO.points.filter((p) => p.pareto).sort((a, b) => a.content - b.content);
  const trace = (pts, extra) => ({ x: pts.map((p) => p.content), y: pts.map((p) => p.engagement),
    text: pts.map((p) => `trial ${p.number}, blend ${p.blend_weight}`), hoverinfo: "text", ...extra });
  const cur = nearestFront(0.5);
  window.Plotly.newPlot(el, [
    trace(PARETO.points, { mode: "markers", name: "trials", marker: { color: "#bbb", size: 6 } }),
    trace(front, { mode: "lines+markers", name: "Pareto front", marker: { color: "#1f77b4", size: 7 } }),
    trace([cur], { mode: "markers", name: "slider", marker: { color: "#d62728", size: 14, symbol: "star" } }),
  ], { margin: { l: 40, r: 10, t: 10, b: 35 }, height: 190, showlegend: false,
       xaxis: { title: { text: "content NDCG" } }, yaxis: { title: { text: "engagement" } } },
  { displayModeBar: false, staticPlot: false, responsive: true });
  el.dataset.current = String(cur.number);
  el.dataset.drawn = "true";
}

function loadPlotly() {
  const s = document.createElement("script");
  s.src = "/workbench/static/plotly.min.js";
  s.onload = drawPareto;
  document.head.appendChild(s);
}

// --- corrections ----------------------------------------------------------------------------------------
async function save(li, grade) {
  const lists = li.closest(".lists");
  const token = (document.getElementById("wb-token") || {}).value || "";
  const who = (document.getElementById("wb-who") || {}).value || "workbench";
  const headers = { "Content-Type": "application/json" };
  if (token) headers["X-Workbench-Token"] = token;
  const mark = li.querySelector(".saved");
  const t0 = performance.now();
  mark.textContent = "saving…";
  let res, body;
  try {
    res = await fetch("/workbench/api/labels", { method: "POST", headers, body: JSON.stringify({
      query: lists.dataset.query, product_id: li.dataset.pid, grade, who }) });
    body = await res.json();
  } catch (e) {
    WB.errors++;
    mark.textContent = "not saved";
    status(`not saved: ${e}`);
    return;
  }
  if (!res.ok) {
    WB.errors++;
    document.body.dataset.errors = String(WB.errors);
    mark.textContent = "not saved";
    status(`not saved (${res.status}): ${(body.detail && body.detail[0] && body.detail[0].msg) || res.statusText}`);
    return;
  }
  for (const el of lists.querySelectorAll("li.result")) {
    if (el.dataset.pid !== li.dataset.pid) continue;
    el.querySelector(".human-grade").textContent = String(body.human.grade);
    el.querySelector(".human-source").textContent = `human · ${body.human.who || ""}`;
    el.querySelector(".saved").textContent = `saved ${grade}`;
  }
  WB.saves.push(performance.now() - t0);
  document.body.dataset.saves = String(WB.saves.length);
  status(`stored grade ${grade} for ${li.dataset.pid}`);
}

function initGrades() {
  if (document.body.dataset.writable !== "true") return;
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button.grade");
    if (b) save(b.closest("li.result"), +b.dataset.grade);
  });
  document.addEventListener("keydown", (ev) => {
    const li = ev.target.closest && ev.target.closest("li.result");
    if (!li) return;
    if ("0123".includes(ev.key) && ev.key.length === 1) {
      ev.preventDefault();
      save(li, +ev.key);
    } else if (ev.key === "j" || ev.key === "ArrowDown") {
      ev.preventDefault();
      (li.nextElementSibling || li).focus();
    } else if (ev.key === "k" || ev.key === "ArrowUp") {
      ev.preventDefault();
      (li.previousElementSibling || li).focus();
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  initToken();
  if (document.querySelector(".lists")) initSlider();
  initGrades();
  WB.ready = performance.now();
  document.body.dataset.ready = "true"; // for a test to wait on without evaluating script (CSP)
  loadPlotly();
});
