// The analyses list: live status and progress, and the model and dataset each came from.
//
// Polled rather than followed with the SSE stream: EventSource cannot send an Authorization header,
// and one list request every two seconds is cheaper than one open stream per running analysis.

import { api } from "./api.js";
import { esc, shortId, timeAgo } from "./dom.js";
import { formatCount } from "./data.js";

const ACTIVE = new Set(["queued", "running"]);
const names = new Map(); // "model:<id>" / "dataset:<id>" → Promise of the record (or null)

function lookup(kind, id) {
  const key = `${kind}:${id}`;
  if (!names.has(key)) names.set(key, (kind === "model" ? api.model(id) : api.dataset(id)).catch(() => null));
  return names.get(key);
}

function statusCell(a) {
  const pct = Math.round(a.progress.fraction * 100);
  const bar = ACTIVE.has(a.status)
    ? `<progress max="100" value="${pct}" aria-label="progress of ${esc(shortId(a.id))}">${pct}%</progress>` : "";
  return `<span class="badge st-${esc(a.status)}">${esc(a.status)}</span> ${bar}
    <span class="note">${esc(a.status === "failed" ? a.error || a.progress.message : a.progress.message)}</span>`;
}

function rowHtml(a, model, dataset) {
  const m = model ? `${esc(model.name)} <span class="note">${model.layers.length} layers, ${formatCount(model.parameters)} weights</span>`
    : `<span class="note">${esc(shortId(a.model_id))}</span>`;
  const d = a.dataset_id ? (dataset ? `${esc(dataset.name)} <span class="note">${dataset.samples} samples</span>`
    : `<span class="note">${esc(shortId(a.dataset_id))}</span>`) : `<span class="note">none</span>`;
  return `<tr data-id="${esc(a.id)}" data-status="${esc(a.status)}">
    <td data-label="Analysis"><div><a href="/analyses/${esc(a.id)}" data-nav>${esc(shortId(a.id))}</a></div></td>
    <td data-label="Model"><div>${m}</div></td>
    <td data-label="Dataset"><div>${d}</div></td>
    <td data-label="Metric"><div>${esc(a.metric)}</div></td>
    <td data-label="Status" class="status"><div>${statusCell(a)}</div></td>
    <td data-label="Created"><div><time datetime="${esc(a.created_at)}">${esc(timeAgo(a.created_at))}</time></div></td>
  </tr>`;
}

export function listPage(root) {
  let timer = null, stopped = false;
  root.innerHTML = `<h1>Analyses</h1>
    <p class="lede">Sensitivity analyses of uploaded models. Open one to see its Pareto front and ask for plans.</p>
    <div class="panel"><table class="analyses">
      <thead><tr><th scope="col">Analysis</th><th scope="col">Model</th><th scope="col">Dataset</th>
      <th scope="col">Metric</th><th scope="col">Status</th><th scope="col">Created</th></tr></thead>
      <tbody><tr><td colspan="6" class="note">Loading…</td></tr></tbody></table>
      <p class="error" role="alert" hidden></p></div>`;
  const body = root.querySelector("tbody");
  const error = root.querySelector(".error");

  async function refresh() {
    let active = false;
    try {
      const list = await api.analyses();
      const resolved = await Promise.all(list.map(async (a) =>
        [a, await lookup("model", a.model_id), a.dataset_id ? await lookup("dataset", a.dataset_id) : null]));
      if (stopped) return;
      body.innerHTML = resolved.length ? resolved.map(([a, m, d]) => rowHtml(a, m, d)).join("")
        : `<tr><td colspan="6" class="note">No analyses yet: upload a model and start one through the API (see /docs).</td></tr>`;
      active = list.some((a) => ACTIVE.has(a.status));
      error.hidden = true;
      document.body.dataset.state = "ready";
    } catch (err) {
      if (stopped) return;
      error.textContent = `Could not load analyses: ${err.message}`;
      error.hidden = false;
    }
    if (!stopped) timer = setTimeout(refresh, active ? 1500 : 10000);
  }
  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
