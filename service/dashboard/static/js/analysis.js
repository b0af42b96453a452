// One analysis: its Pareto front, plans, and the per-layer formats of a picked point or plan.
//
// State lives in one object; every change goes through a render function of the part it touches.
// Data shaping is in data.js, SVG in draw.js; this module wires events to state.

import { api, ApiError, request } from "./api.js";
import {
  FRONT_POINTS, axisFormat, axisOptions, buildChart, compareSummary, confidenceText, formatBytes, formatCount,
  formatSci, heatStrips, layerRows, planLabel, proxyRows, ramp, selectionDocument, selectionFor, warningSummary, xValue, solverText, solverTitle } from "./data.js";
import { renderChart, renderLegend, renderStrips, showTooltip } from "./draw.js";
import { announce, esc, saveBlob, saveJson, shortId } from "./dom.js";

const VIRIDIS_CSS = [0, 0.25, 0.5, 0.75, 1].map((t) =>
  ramp([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], t)).join(",");

function statLabel(statistic) {
  return statistic === "hessian_trace" || statistic === "Tr(H)" ? "Tr(H)/n" : `${statistic}/n`;
}

export function analysisPage(root, id) {
  const st = {
    id, analysis: null, model: null, dataset: null, table: null, frontiers: {}, axis: "bytes", logY: null,
    compare: false, plans: [], evaluations: null, exportFormats: null, selA: null, selB: null, active: null,
    chart: null, options: [], stopped: false, timer: null,
  };
  root.innerHTML = `<h1>Analysis ${esc(shortId(id))}</h1><div class="panel" id="status-panel"><p class="note">Loading…</p></div>`;
  start(root, st);
  return () => { st.stopped = true; clearTimeout(st.timer); if (st.resize) st.resize.disconnect(); };
}

async function start(root, st) {
  // Asked for before the analysis says it succeeded: one round trip less on the common path; a
  // running analysis answers 409 and the answers are dropped.
  const early = Promise.all([api.table(st.id), api.frontier(st.id, "bytes", FRONT_POINTS), api.plans(st.id)]);
  early.catch(() => {});
  try {
    st.analysis = await api.analysis(st.id);
  } catch (err) {
    root.querySelector("#status-panel").innerHTML = `<p class="error" role="alert">${esc(err.message)}</p>`;
    return;
  }
  const meta = Promise.all([
    api.model(st.analysis.model_id).catch(() => null),
    st.analysis.dataset_id ? api.dataset(st.analysis.dataset_id).catch(() => null) : null,
  ]);
  if (st.analysis.status !== "succeeded") {
    [st.model, st.dataset] = await meta;
    return waitForResult(root, st);
  }
  // Everything the first paint needs, in parallel; the optional endpoints never hold it up.
  const [[table, frontier, plans], [model, dataset]] = await Promise.all([early, meta])
    .catch((err) => { showError(root, err); return [[null, null, null], [null, null]]; });
  if (!table || st.stopped) return;
  Object.assign(st, { table, plans, model, dataset });
  st.frontiers.bytes = frontier;
  restoreSelection(st);
  layout(root, st);
  renderAll(root, st);
  window.__bitplanReady = performance.now();
  document.body.dataset.state = "ready";
  detectOptional(root, st);
}

function showError(root, err) {
  const panel = root.querySelector("#status-panel") || root;
  panel.innerHTML = `<p class="error" role="alert">Could not load this analysis: ${esc(err.message)}</p>`;
}

function waitForResult(root, st) {
  const a = st.analysis;
  const pct = Math.round(a.progress.fraction * 100);
  root.querySelector("#status-panel").innerHTML = `${header(st)}
    <p><span class="badge st-${esc(a.status)}">${esc(a.status)}</span> ${esc(a.error || a.progress.message)}</p>
    ${a.status === "queued" || a.status === "running" ? `<progress max="100" value="${pct}" aria-label="progress">${pct}%</progress>` : ""}`;
  document.body.dataset.state = "waiting";
  if (a.status === "queued" || a.status === "running") {
    st.timer = setTimeout(async () => {
      try { st.analysis = await api.analysis(st.id); } catch { /* keep the last state and retry */ }
      if (st.stopped) return;
      if (st.analysis.status === "succeeded") start(root, st);
      else waitForResult(root, st);
    }, 1500);
  }
}

function header(st) {
  const a = st.analysis, m = st.model, d = st.dataset;
  const model = m ? `<strong>${esc(m.name)}</strong> (${m.layers.length} layers, ${formatCount(m.parameters)} weights)`
    : esc(shortId(a.model_id));
  const data = a.dataset_id ? `data ${d ? `<strong>${esc(d.name)}</strong> (${d.samples} samples)` : esc(shortId(a.dataset_id))}`
    : "no calibration data";
  return `<p class="lede">Model ${model} · ${data} · metric <strong>${esc(a.metric)}</strong> ·
    candidates ${a.candidates.map(esc).join(", ")}</p>${warningsBlock((st.table || {}).warnings)}`;
}

/** The analysis's warnings (numbers it cannot fully stand behind), collapsed to their codes. */
function warningsBlock(warnings, id = "warnings") {
  if (!warnings || !warnings.length) return "";
  return `<details class="warnings" id="${id}" role="status"><summary>⚠ ${warnings.length} warning${warnings.length > 1 ? "s" : ""}:
    ${esc(warningSummary(warnings))}</summary><ul>${warnings.map((w) =>
      `<li data-code="${esc(w.code)}"><code>${esc(w.code)}</code> ${esc(w.message)}</li>`).join("")}</ul></details>`;
}

// ---- layout (once) and event wiring ---------------------------------------------------------

function layout(root, st) {
  const axes = axisOptions(st.frontiers.bytes);
  const costs = axes.filter((x) => x.key !== "average_bits").map((x) => x.key);
  root.innerHTML = `<h1>Analysis ${esc(shortId(st.id))}</h1>${header(st)}
  <div class="grid">
    <section class="panel chart-panel" aria-labelledby="front-h">
      <div class="panel-head"><h2 id="front-h">Pareto front</h2>
        <div class="controls">
          <label>x axis <select id="axis">${axes.map((x) => `<option value="${esc(x.key)}">${esc(x.label)}</option>`).join("")}</select></label>
          <label><input type="checkbox" id="logy"> log y</label>
          <label><input type="checkbox" id="compare"> compare</label>
        </div></div>
      <div id="chart" class="chart" tabindex="0" aria-describedby="chart-help"
           aria-label="Pareto front chart: arrow keys move between points, Enter picks, Shift+Enter compares"></div>
      <ul class="legend" id="legend"></ul>
      <p class="note" id="chart-help">Click a point for its per-layer formats; shift-click (or tick <em>compare</em>) to
        put a second one beside it. Arrow keys move between points in the chart and in the list.</p>
    </section>
    <aside class="side">
      <section class="panel" aria-labelledby="budget-h">
        <h2 id="budget-h">New budget</h2>
        <form id="budget" novalidate>
          <div class="row">
            <label for="budget-kind">Limit</label>
            <select id="budget-kind"><option value="avg_bits">avg_bits (average bits per weight)</option>
              ${costs.map((c) => `<option value="${esc(c)}">${esc(c)}</option>`).join("")}</select>
          </div>
          <div class="row">
            <label for="budget-value">Value</label>
            <input id="budget-value" type="number" inputmode="decimal" min="0" step="any" value="4" required>
          </div>
          <button type="submit" id="budget-submit">Solve</button>
          <p class="error" id="budget-error" role="alert" hidden></p>
        </form>
      </section>
      <section class="panel" aria-labelledby="plans-h">
        <h2 id="plans-h">Plans</h2>
        <ul class="plans" id="plans"></ul>
      </section>
      <section class="panel" aria-labelledby="points-h">
        <h2 id="points-h">Points</h2>
        <ul class="points" id="points" role="listbox" tabindex="0" aria-labelledby="points-h"></ul>
      </section>
    </aside>
  </div>
  <section class="panel" id="detail" aria-labelledby="detail-h">
    <div class="panel-head"><h2 id="detail-h">Per-layer formats</h2><div class="actions" id="actions"></div></div>
    <div id="summary"></div>
    <div id="strips" class="strips"></div>
    <div class="table-wrap" id="layers"></div>
  </section>
  <section class="panel" id="proxy" aria-labelledby="proxy-h" hidden>
    <h2 id="proxy-h">How well predictions rank measured truth</h2>
    <div id="measured-warnings"></div>
    <div class="table-wrap" id="proxy-table"></div>
  </section>`;

  const chartHost = root.querySelector("#chart");
  root.querySelector("#axis").value = st.axis;
  root.querySelector("#axis").addEventListener("change", (e) => setAxis(root, st, e.target.value));
  root.querySelector("#logy").addEventListener("change", (e) => { st.logY = e.target.checked; renderFront(root, st); });
  root.querySelector("#compare").addEventListener("change", (e) => { st.compare = e.target.checked; });
  chartHost.addEventListener("click", (e) => {
    const pt = e.target.closest(".pt");
    if (pt) pick(root, st, pt.dataset.id, e.shiftKey || st.compare);
  });
  chartHost.addEventListener("mouseover", (e) => {
    const pt = e.target.closest(".pt");
    if (pt) showTooltip(chartHost, pt.dataset.id);
  });
  chartHost.addEventListener("mouseleave", () => showTooltip(chartHost, st.active));
  chartHost.addEventListener("keydown", (e) => onKeys(root, st, e));
  chartHost.addEventListener("blur", () => showTooltip(chartHost, null));
  const list = root.querySelector("#points");
  list.addEventListener("keydown", (e) => onKeys(root, st, e));
  list.addEventListener("click", (e) => {
    const li = e.target.closest("[role=option]");
    if (li) { setActive(root, st, li.dataset.id); pick(root, st, li.dataset.id, e.shiftKey || st.compare); }
  });
  root.querySelector("#budget-kind").addEventListener("change", (e) => {
    const input = root.querySelector("#budget-value");
    input.value = e.target.value === "avg_bits" ? "4" : "";
    input.placeholder = e.target.value === "bytes" ? "e.g. 250000" : "";
  });
  root.querySelector("#budget").addEventListener("submit", (e) => { e.preventDefault(); submitBudget(root, st); });
  root.querySelector("#plans").addEventListener("click", (e) => onPlanAction(root, st, e));
  root.querySelector("#actions").addEventListener("click", (e) => onDetailAction(root, st, e));
  root.querySelector("#strips").addEventListener("click", (e) => {
    const cell = e.target.closest("[data-layer]");
    const row = cell && root.querySelector(`tr[data-layer="${CSS.escape(cell.dataset.layer)}"]`);
    if (row) { row.scrollIntoView({ block: "center" }); row.classList.add("flash"); setTimeout(() => row.classList.remove("flash"), 1200); }
  });
  let lastWidth = chartHost.clientWidth;
  st.resize = new ResizeObserver(() => {
    if (Math.abs(chartHost.clientWidth - lastWidth) > 4) { lastWidth = chartHost.clientWidth; drawChart(root, st); }
  });
  st.resize.observe(chartHost);
}

function renderAll(root, st) {
  renderFront(root, st);
  renderPlans(root, st);
  renderDetail(root, st);
}

// ---- the front ------------------------------------------------------------------------------

function frontierFor(st) {
  const axis = axisOptions(st.frontiers.bytes).find((x) => x.key === st.axis);
  return st.frontiers[axis ? axis.cost : "bytes"];
}

async function setAxis(root, st, axis) {
  st.axis = axis;
  const cost = (axisOptions(st.frontiers.bytes).find((x) => x.key === axis) || { cost: "bytes" }).cost;
  if (!st.frontiers[cost]) {
    root.querySelector("#chart").innerHTML = `<p class="note">Computing the front for ${esc(cost)}…</p>`;
    try {
      st.frontiers[cost] = await api.frontier(st.id, cost, FRONT_POINTS);
    } catch (err) {
      root.querySelector("#chart").innerHTML = `<p class="error" role="alert">${esc(err.message)}</p>`;
      return;
    }
  }
  renderFront(root, st);
}

function renderFront(root, st) {
  st.chart = buildChart({ frontier: frontierFor(st), axis: st.axis, plans: st.plans, evaluations: st.evaluations,
                          logY: st.logY });
  const logBox = root.querySelector("#logy");
  logBox.checked = st.chart.logY;
  logBox.disabled = !st.chart.canLog;
  renderLegend(root.querySelector("#legend"), st.chart);
  drawChart(root, st);
  renderOptions(root, st);
}

function drawChart(root, st) {
  const selected = {};
  if (st.selA) selected[st.selA.id] = "A";
  if (st.selB) selected[st.selB.id] = "B";
  renderChart(root.querySelector("#chart"), st.chart, { selected, active: st.active });
}

function renderOptions(root, st) {
  const fmt = axisFormat(st.axis);
  st.options = st.chart.series.filter((s) => s.key !== "hull").flatMap((s) => s.points);
  const list = root.querySelector("#points");
  list.innerHTML = st.options.map((p, i) => {
    const tag = st.selA && st.selA.id === p.id ? " (A)" : st.selB && st.selB.id === p.id ? " (B)" : "";
    return `<li role="option" id="opt-${i}" data-id="${esc(p.id)}" aria-selected="${tag ? "true" : "false"}"
      class="${p.id === st.active ? "active" : ""}"><span class="dot s-${p.series}"></span>${esc(p.label)}${tag}
      <span class="note">${esc(fmt(p.x))} · damage ${esc(formatSci(p.y))}</span></li>`;
  }).join("");
  const idx = st.options.findIndex((p) => p.id === st.active);
  if (idx >= 0) list.setAttribute("aria-activedescendant", `opt-${idx}`);
  else list.removeAttribute("aria-activedescendant");
}

function setActive(root, st, id) {
  st.active = id;
  const list = root.querySelector("#points");
  list.querySelectorAll(".active").forEach((el) => el.classList.remove("active"));
  const idx = st.options.findIndex((p) => p.id === id);
  if (idx >= 0) {
    const li = list.querySelector(`#opt-${idx}`);
    li.classList.add("active");
    list.setAttribute("aria-activedescendant", li.id);
    li.scrollIntoView({ block: "nearest" });
  }
  drawChart(root, st);
  const chartHost = root.querySelector("#chart");
  if (document.activeElement === chartHost) showTooltip(chartHost, id);
}

function onKeys(root, st, e) {
  if (!st.options.length) return;
  let idx = st.options.findIndex((p) => p.id === st.active);
  const last = st.options.length - 1;
  const moves = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 };
  if (e.key in moves) idx = Math.max(0, Math.min(last, (idx < 0 ? -1 : idx) + moves[e.key]));
  else if (e.key === "Home") idx = 0;
  else if (e.key === "End") idx = last;
  else if ((e.key === "Enter" || e.key === " ") && idx >= 0) {
    e.preventDefault();
    pick(root, st, st.options[idx].id, e.shiftKey || st.compare);
    return;
  } else return;
  e.preventDefault();
  setActive(root, st, st.options[idx].id);
}

// ---- picking and comparing ------------------------------------------------------------------

function pick(root, st, id, compare) {
  const sel = selectionFor(id, { frontiers: st.frontiers, plans: st.plans });
  if (!sel) return;
  if (compare && st.selA && st.selA.id !== id) st.selB = sel;
  else { st.selA = sel; st.selB = null; }
  st.active = id;
  saveSelection(st);
  drawChart(root, st);
  renderOptions(root, st);
  renderDetail(root, st);
  announce(st.selB ? `Comparing ${st.selA.label} with ${st.selB.label}` : `Showing ${sel.label}`);
}

function saveSelection(st) {
  const q = new URLSearchParams();
  if (st.selA) q.set("a", st.selA.id);
  if (st.selB) q.set("b", st.selB.id);
  history.replaceState(history.state, "", `${location.pathname}${q.toString() ? `?${q}` : ""}`);
}

function restoreSelection(st) {
  const q = new URLSearchParams(location.search);
  const ctx = { frontiers: st.frontiers, plans: st.plans };
  st.selA = q.get("a") ? selectionFor(q.get("a"), ctx) : null;
  st.selB = st.selA && q.get("b") ? selectionFor(q.get("b"), ctx) : null;
  st.active = st.selA ? st.selA.id : null;
}

// ---- plans ----------------------------------------------------------------------------------

function renderPlans(root, st) {
  const list = root.querySelector("#plans");
  if (!st.plans.length) {
    list.innerHTML = `<li class="note">No plans yet: ask for a budget above.</li>`;
    return;
  }
  list.innerHTML = st.plans.map((p) => `<li data-plan="${esc(p.id)}">
    <div><strong>${esc(planLabel(p))}</strong>
    <span class="note">${esc(p.average_bits.toFixed(2))} bits · ${esc(formatBytes(p.total_bytes))} · damage ${esc(formatSci(p.predicted_damage))} · <span class="solver" title="${esc(solverTitle(p.solver))}">${esc(solverText(p.solver))}</span> · confidence <span class="confidence">${esc(confidenceText(p))}</span></span>
    ${(p.warnings || []).length ? `<span class="warn" title="${esc(p.warnings.map((w) => w.message).join("\n"))}">⚠ ${esc(warningSummary(p.warnings))}</span>` : ""}</div>
    <div class="buttons"><button type="button" data-act="show">Show</button>
    <button type="button" data-act="compare">Compare</button>
    <button type="button" data-act="json" aria-label="Download ${esc(planLabel(p))} as JSON">JSON</button></div></li>`).join("");
}

function onPlanAction(root, st, e) {
  const btn = e.target.closest("button[data-act]");
  if (!btn) return;
  const plan = st.plans.find((p) => p.id === btn.closest("[data-plan]").dataset.plan);
  if (btn.dataset.act === "json") saveJson(plan, `plan-${plan.id}.json`);
  else pick(root, st, `plan:${plan.id}`, btn.dataset.act === "compare");
}

async function submitBudget(root, st) {
  const kind = root.querySelector("#budget-kind").value;
  const value = Number(root.querySelector("#budget-value").value);
  const error = root.querySelector("#budget-error");
  const button = root.querySelector("#budget-submit");
  if (!(value > 0)) {
    error.textContent = "Enter a number greater than 0.";
    error.hidden = false;
    root.querySelector("#budget-value").focus();
    return;
  }
  error.hidden = true;
  button.disabled = true;
  button.textContent = "Solving…";
  try {
    const plan = await api.createPlan(st.id, { [kind]: value });
    st.plans.push(plan);
    renderFront(root, st);
    renderPlans(root, st);
    pick(root, st, `plan:${plan.id}`, st.compare);
    announce(`New plan: ${plan.average_bits.toFixed(2)} bits, damage ${formatSci(plan.predicted_damage)}`);
  } catch (err) {
    error.textContent = err instanceof ApiError && err.status === 401 ? "This server needs a token with the submit scope."
      : err.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
    button.textContent = "Solve";
  }
}

// ---- the detail panel -----------------------------------------------------------------------

function renderDetail(root, st) {
  const sels = [st.selA, st.selB].filter(Boolean);
  const summary = root.querySelector("#summary");
  const actions = root.querySelector("#actions");
  if (!sels.length) {
    summary.innerHTML = `<p class="note">Pick a point on the front, a plan, or a point in the list to see its formats
      next to each layer's sensitivity.</p>`;
    actions.innerHTML = "";
  } else {
    const rows = compareSummary(sels);
    summary.innerHTML = `<table class="summary"><thead><tr><th scope="col"></th>
      ${sels.map((s, k) => `<th scope="col"><span class="tag tag-${k ? "B" : "A"}">${k ? "B" : "A"}</span> ${esc(s.label)}</th>`).join("")}
      ${sels.length === 2 ? `<th scope="col">B vs A</th>` : ""}</tr></thead><tbody>
      ${rows.map((r) => `<tr><th scope="row">${esc(r.label)}</th>${r.values.map((v) => `<td>${esc(v)}</td>`).join("")}
        ${sels.length === 2 ? `<td>${r.delta === null ? "–" : `${r.delta > 0 ? "+" : ""}${(r.delta * 100).toFixed(1)}%`}</td>` : ""}</tr>`).join("")}
      </tbody></table>`;
    actions.innerHTML = sels.map((s, k) => {
      const tag = k ? "B" : "A";
      let html = `<button type="button" data-act="json" data-which="${tag}">Download ${tag} as JSON</button>`;
      if (!s.plan && s.costs) html += `<button type="button" data-act="plan" data-which="${tag}">Save ${tag} as a plan</button>`;
      if (s.plan && st.exportFormats) {
        html += `<label class="export">Export ${tag} <select data-which="${tag}">${st.exportFormats.map((f) =>
          `<option>${esc(f)}</option>`).join("")}</select></label><button type="button" data-act="export" data-which="${tag}">Download</button>`;
      }
      return html;
    }).join("") + (st.selB ? `<button type="button" data-act="clear-b" class="quiet">Stop comparing</button>` : "");
  }
  const layers = layerRows(st.table, sels);
  renderStrips(root.querySelector("#strips"), heatStrips(layers, sels));
  const bitsLegend = sels.length ? `<p class="note strip-legend">Sensitivity: light = low, dark = high (log scale).
    Bits: <span class="ramp" style="background:linear-gradient(90deg,${VIRIDIS_CSS})"></span> few → many.
    Click a cell to find its layer.</p>` : `<p class="note strip-legend">Sensitivity per layer: light = low, dark = high (log scale).</p>`;
  root.querySelector("#strips").insertAdjacentHTML("beforeend", bitsLegend);
  root.querySelector("#layers").innerHTML = layerTable(layers, sels);
}

function layerTable(layers, sels) {
  const stat = statLabel(layers.statistic);
  const head = `<tr><th scope="col" class="num opt">#</th><th scope="col">Layer</th><th scope="col" class="opt">Kind</th><th scope="col" class="num opt">Weights</th>
    <th scope="col" class="sens-col">Sensitivity ${esc(stat)} <span class="note">±95% CI</span></th>
    ${sels.map((_, k) => `<th scope="col">Format ${k ? "B" : "A"}</th><th scope="col" class="num">Damage ${k ? "B" : "A"}</th>`).join("")}</tr>`;
  const body = layers.rows.map((r, i) => {
    const bar = r.bar ? `<span class="bar" aria-hidden="true"><span class="fill" style="width:${r.bar.value.toFixed(1)}%"></span>${
      r.bar.lo !== null ? `<span class="ci" style="left:${r.bar.lo.toFixed(1)}%;width:${Math.max(0.5, r.bar.hi - r.bar.lo).toFixed(1)}%"></span>` : ""}</span>` : "";
    const value = r.sens === null ? "–" : `${formatSci(r.sens)}${r.ci !== null ? ` ± ${formatSci(r.ci)}` : ""}`;
    const cells = r.cells.map((c) => c ? `<td><span class="fmt">${esc(c.candidate)}</span>${c.bits !== null ? ` <span class="note">${c.bits.toFixed(2)} b</span>` : ""}</td>
      <td class="num">${esc(formatSci(c.damage))}</td>` : `<td>–</td><td>–</td>`).join("");
    return `<tr data-layer="${esc(r.layer)}" class="${r.differs ? "differs" : ""}"><td class="num opt">${i + 1}</td><th scope="row">${esc(r.layer)}</th>
      <td class="opt">${esc(r.kind)}</td><td class="num opt">${esc(formatCount(r.weights))}</td>
      <td class="sens">${bar}<span class="val">${esc(value)}${r.converged ? "" : ` <abbr title="the estimate hit its probe cap before its target precision">*</abbr>`}</span></td>${cells}</tr>`;
  }).join("");
  const changed = sels.length === 2 ? layers.rows.filter((r) => r.differs).length : null;
  return `<table class="layers"><caption>${layers.rows.length} layers${changed !== null ? `, ${changed} with different formats in A and B (highlighted)` : ""}</caption>
    <thead>${head}</thead><tbody>${body}</tbody></table>`;
}

async function onDetailAction(root, st, e) {
  const btn = e.target.closest("button[data-act]");
  if (!btn) return;
  const sel = btn.dataset.which === "B" ? st.selB : st.selA;
  const act = btn.dataset.act;
  if (act === "clear-b") {
    st.selB = null;
    saveSelection(st);
    drawChart(root, st); renderOptions(root, st); renderDetail(root, st);
  } else if (act === "json") {
    const doc = selectionDocument(sel, st.id);
    saveJson(doc, sel.plan ? `plan-${sel.plan.id}.json` : `analysis-${shortId(st.id)}-${sel.id.replace(/:/g, "-")}.json`);
  } else if (act === "plan") {
    // The point's own cost as the budget: the exact solver answers this point (or one as good).
    const cost = frontierFor(st).cost;
    const value = xValue(cost, sel);
    root.querySelector("#budget-kind").value = cost in (sel.costs || {}) ? cost : "bytes";
    root.querySelector("#budget-value").value = String(value ?? sel.costs.bytes);
    submitBudget(root, st);
  } else if (act === "export") {
    const fmt = root.querySelector(`#actions select[data-which="${btn.dataset.which}"]`).value;
    try {
      const resp = await request(
        `/v1/plans/${encodeURIComponent(sel.plan.id)}/export?format=${encodeURIComponent(fmt)}`, { raw: true });
      const name = (resp.headers.get("content-disposition") || "").match(/filename="?([^";]+)"?/);
      saveBlob(await resp.blob(), name ? name[1] : `plan-${sel.plan.id}-${fmt}`);
    } catch (err) {
      announce(`Export failed: ${err.message}`);
    }
  }
}

// ---- optional endpoints (evaluations, exports): shown only where the server has them --------

/** Rank agreement of predicted damage with measured loss: per metric (vs loss_delta) and per
 *  measured frontier (plan damage vs measured loss). Hidden until something measured exists. */
function renderProxyQuality(root, proxy) {
  const panel = root.querySelector("#proxy");
  if (!panel || !proxy) return;
  const rows = proxyRows(proxy);
  if (!rows.length) return;
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(3) : "–");
  root.querySelector("#proxy-table").innerHTML = `<table class="proxy"><thead><tr><th scope="col">what is ranked</th>
    <th scope="col">Spearman ρ</th><th scope="col">Kendall τ-b</th><th scope="col">n</th></tr></thead><tbody>
    ${rows.map((r) => `<tr><td>${esc(r.label)}</td><td>${num(r.spearman)}</td><td>${num(r.kendall)}</td>
      <td>${esc(String(r.n ?? "–"))}</td></tr>`).join("")}</tbody></table>`;
  panel.hidden = false;
}

/** What measuring said about the predictions (a plan far above its predicted damage, a baseline that
 *  measured better): the evaluations' warnings, above the rank agreement. */
function renderMeasuredWarnings(root, evaluations) {
  const host = root.querySelector("#measured-warnings");
  const warnings = (evaluations || []).flatMap((ev) => ev.warnings || []);
  if (!host || !warnings.length) return;
  host.innerHTML = warningsBlock(warnings, "evaluation-warnings");
  root.querySelector("#proxy").hidden = false;
}

async function detectOptional(root, st) {
  const [evaluations, openapi, proxy] = await Promise.all([
    api.evaluations(st.id).catch(() => null), api.openapi(), api.proxyQuality(st.id).catch(() => null)]);
  if (st.stopped) return;
  renderProxyQuality(root, proxy);
  const list = evaluations && (Array.isArray(evaluations) ? evaluations : evaluations.evaluations || evaluations.items);
  const exportPath = openapi && openapi.paths && openapi.paths["/v1/plans/{plan_id}/export"];
  let formats = null;
  if (exportPath && exportPath.get) {
    const param = (exportPath.get.parameters || []).find((p) => p.name === "format");
    const schema = param && param.schema ? param.schema : {};
    const refName = schema.$ref && schema.$ref.split("/").pop();
    const enumSchema = refName ? openapi.components.schemas[refName] : (schema.anyOf || [schema]).find((s) => s.enum) || schema;
    // An enum when the server declares one; otherwise the names its description lists ("json, nncf or hawq").
    const described = ((param && param.description) || schema.description || "").split(/,|\bor\b/)
      .map((w) => w.trim()).filter((w) => /^[a-z0-9_.-]+$/i.test(w));
    formats = (enumSchema && enumSchema.enum) || (described.length ? described : [schema.default || "json"]);
  }
  st.evaluations = Array.isArray(list) && list.length ? list : null;
  renderMeasuredWarnings(root, st.evaluations);
  st.exportFormats = formats;
  if (st.evaluations) renderFront(root, st);
  if (formats) renderDetail(root, st);
}
