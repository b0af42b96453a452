// Computing, no drawing: API payloads in, plain chart and table structures out.
//
// Everything here is a pure function of its arguments, so draw.js renders whatever it is handed and
// the browser tests can check these structures directly (tests/dashboard/test_data.py).

export const FRONT_POINTS = 200;

const AXES = {
  bytes: { label: "Size (bytes, scales included)", cost: "bytes", format: (v) => formatBytes(v) },
  average_bits: { label: "Average bits per weight", cost: "bytes", format: (v) => v.toFixed(2) },
  bops: { label: "BOPs", cost: "bops", format: (v) => formatCount(v) },
  latency_ms: { label: "Latency (ms)", cost: "latency_ms", format: (v) => formatCount(v) },
};

// ---- numbers -------------------------------------------------------------------------------

export function formatBytes(n) {
  if (!Number.isFinite(n)) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${i === 0 ? Math.round(n) : n.toPrecision(3)} ${units[i]}`;
}

export function formatCount(n) {
  if (!Number.isFinite(n)) return "–";
  const a = Math.abs(n);
  if (a >= 1e12) return `${(n / 1e12).toPrecision(3)}T`;
  if (a >= 1e9) return `${(n / 1e9).toPrecision(3)}G`;
  if (a >= 1e6) return `${(n / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${(n / 1e3).toPrecision(3)}k`;
  return a >= 100 || a === 0 ? String(Math.round(n * 100) / 100) : n.toPrecision(3);
}

export function formatSci(n) {
  if (!Number.isFinite(n)) return "–";
  const a = Math.abs(n);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? n.toExponential(2) : n.toPrecision(3);
}

/** About `count` round tick values covering [lo, hi]. */
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return ticks;
}

function logTicks(lo, hi) {
  const ticks = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    const v = 10 ** e;
    if (v >= lo * 0.999 && v <= hi * 1.001) ticks.push(v);
  }
  return ticks.length >= 2 ? ticks : niceTicks(lo, hi, 4);
}

// ---- axes and points -----------------------------------------------------------------------

/** The x axes this frontier can be drawn against: bytes and average bits always, other costs when present. */
export function axisOptions(frontier) {
  const first = frontier.points[0] || frontier.baselines[0] || { costs: {} };
  const keys = Object.keys(first.costs || {});
  const out = [];
  if (keys.includes("bytes")) out.push("bytes");
  if (first.average_bits !== undefined || keys.includes("bytes")) out.push("average_bits");
  for (const k of keys) if (!out.includes(k)) out.push(k);
  return out.map((key) => ({ key, cost: (AXES[key] || { cost: key }).cost, label: axisLabel(key) }));
}

export function axisLabel(key) {
  return (AXES[key] && AXES[key].label) || key;
}

export function axisFormat(key) {
  return (AXES[key] && AXES[key].format) || formatCount;
}

/** An item's x on an axis: a frontier point, a plan (PlanOut) or an evaluation. */
export function xValue(axis, item) {
  if (axis === "average_bits") return item.average_bits;
  const costs = item.costs || {};
  if (costs[axis] !== undefined) return costs[axis];
  if (axis === "bytes") return item.total_bytes;
  return undefined;
}

function totals(item, damage) {
  const lines = [["predicted damage", formatSci(damage)]];
  if (item.average_bits !== undefined) lines.push(["average bits", item.average_bits.toFixed(3)]);
  for (const [k, v] of Object.entries(item.costs || {})) lines.push([k, k === "bytes" ? formatBytes(v) : formatCount(v)]);
  if (item.status) lines.push(["solver", item.gap ? `${item.status}, gap ${formatSci(item.gap)}` : item.status]);
  return lines;
}

/** The measured value an evaluation carries (its schema arrives later: look in the likely places). */
export function measuredValue(ev) {
  for (const where of [ev, ev.metrics || {}, ev.measured || {}, ev.result || {}]) {
    for (const key of ["loss_delta", "loss", "accuracy"]) {
      if (typeof where[key] === "number") return { key, value: where[key] };
    }
  }
  return null;
}

/**
 * The chart of one analysis on one x axis: series of points with their tooltips, domains and ticks.
 * `frontier` is the endpoint's answer for the axis's cost; `plans` the stored plans; `evaluations`
 * null (endpoint absent) or a list; `selectedIds` the ids to highlight.
 */
export function buildChart({ frontier, axis, plans = [], evaluations = null, logY = null }) {
  const seriesOf = (key, label, kind, items, makeLabel) => {
    const points = [];
    items.forEach((item, i) => {
      const x = xValue(axis, item);
      const y = item.damage ?? item.predicted_damage;
      if (!Number.isFinite(x) || !Number.isFinite(y)) return;
      const id = key === "plan" ? `plan:${item.id}` : `${key}:${frontier.cost}:${i}`;
      points.push({ id, x, y, label: makeLabel(item, i), totals: totals(item, y), series: key, index: i });
    });
    return { key, label, kind, points };
  };
  const series = [
    seriesOf("front", "Exact front", "step", frontier.points, (_, i) => `Front point ${i + 1}`),
    seriesOf("hull", "Convex hull", "line", frontier.hull || [], (_, i) => `Hull point ${i + 1}`),
    seriesOf("baseline", "Uniform baselines", "diamond", frontier.baselines || [], (b) => b.name),
    seriesOf("greedy", "Greedy", "cross", frontier.greedy || [], (g, i) => `${g.name || "greedy"} ${i + 1}`),
    seriesOf("plan", "Your plans", "square", plans, (p) => planLabel(p)),
  ];
  series.forEach((s) => s.points.sort((a, b) => a.x - b.x));

  const ys = series.flatMap((s) => s.points.map((p) => p.y));
  const xs = series.flatMap((s) => s.points.map((p) => p.x));
  const positive = ys.length > 0 && ys.every((y) => y > 0);
  const spread = positive ? Math.max(...ys) / Math.min(...ys) : 1;
  // Damage often spans decades (uniform INT2 dwarfs everything else): log by default when it does.
  const useLog = positive && (logY === null ? spread > 100 : logY);
  const [xLo, xHi] = pad(Math.min(...xs), Math.max(...xs), 0.04);
  let yDomain;
  if (useLog) yDomain = [Math.min(...ys) / 1.5, Math.max(...ys) * 1.5];
  else yDomain = pad(Math.min(0, ...ys), Math.max(...ys), 0.06);

  const measured = buildMeasured(evaluations, axis, plans);
  const fmt = axisFormat(axis);
  return {
    axis,
    xLabel: axisLabel(axis),
    yLabel: "Predicted damage",
    logY: useLog,
    canLog: positive,
    xDomain: [xLo, xHi],
    yDomain,
    xTicks: niceTicks(xLo, xHi, 6).map((v) => ({ value: v, label: fmt(v) })),
    yTicks: (useLog ? logTicks(...yDomain) : niceTicks(...yDomain, 5)).map((v) => ({ value: v, label: formatSci(v) })),
    series,
    measured,
    empty: xs.length === 0,
  };
}

function pad(lo, hi, frac) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (hi === lo) return [lo - (Math.abs(lo) || 1) * 0.5, hi + (Math.abs(hi) || 1) * 0.5];
  const d = (hi - lo) * frac;
  return [lo - d, hi + d];
}

/** Measured points on their own right-hand axis (measured loss is not in predicted-damage units). */
function buildMeasured(evaluations, axis, plans) {
  if (!Array.isArray(evaluations) || evaluations.length === 0) return null;
  const byPlan = new Map(plans.map((p) => [p.id, p]));
  const points = [];
  let key = null;
  // One item per measured point: an evaluation lists its measured points (the plan or frontier
  // points, plus baselines at the same bytes); an older shape carried one value on the evaluation.
  const items = [];
  evaluations.forEach((ev, i) => {
    if (Array.isArray(ev.points) && ev.points.length) {
      ev.points.forEach((pt) => items.push({ src: pt, m: measuredValue(pt), label: `Measured ${pt.source || "point"}` }));
    } else {
      items.push({ src: (ev.plan_id && byPlan.get(ev.plan_id)) || ev, m: measuredValue(ev), label: `Measured ${i + 1}` });
    }
  });
  items.forEach(({ src, m, label }, i) => {
    const x = xValue(axis, src);
    if (!m || !Number.isFinite(x)) return;
    key = key || m.key;
    if (m.key !== key) return;
    points.push({ id: `measured:${i}`, x, y: m.value, label, series: "measured", index: i,
                  totals: [[`measured ${m.key}`, formatSci(m.value)],
                           ...(Number.isFinite(src.measured_over_predicted)
                             ? [["measured KL ÷ predicted", `${src.measured_over_predicted.toFixed(2)}×`]] : []),
                           ...totals(src, src.damage ?? src.predicted_damage ?? NaN)] });
  });
  if (points.length === 0) return null;
  points.sort((a, b) => a.x - b.x);
  const [lo, hi] = pad(Math.min(...points.map((p) => p.y)), Math.max(...points.map((p) => p.y)), 0.08);
  return { label: `Measured ${key}`, key, points, yDomain: [lo, hi],
           yTicks: niceTicks(lo, hi, 5).map((v) => ({ value: v, label: formatSci(v) })) };
}

/** "97%", "100% (exact)", or "?" when the server gave no confidence. */
export function confidenceText(plan) {
  const c = plan.confidence;
  if (!c) return "?";
  return `${Math.round(c.confidence * 100)}%${c.exact ? " (exact)" : ""}`;
}

/** Warning codes with counts ("negative_trace×9, stopped_early"); "" when there are none. */
export function warningSummary(warnings) {
  const counts = new Map();
  for (const w of warnings || []) counts.set(w.code, (counts.get(w.code) || 0) + 1);
  return [...counts].map(([code, n]) => (n > 1 ? `${code}×${n}` : code)).join(", ");
}

/** "optimal", "feasible (gap 0.30%)", "time_limit (gap 2.0%)": the solver's word and how far from proven. */
export function solverText(solver) {
  const status = (solver && solver.status) || "?";
  if (status !== "optimal" && solver && typeof solver.gap === "number") return `${status} (gap ${(solver.gap * 100).toPrecision(2)}%)`;
  return status;
}

/** The tooltip of solverText: what the status promises. */
export function solverTitle(solver) {
  const s = solver || {};
  if (s.status === "optimal") {
    return "proven optimal" + (typeof s.tolerance === "number" ? ` within a relative tolerance of ${s.tolerance.toPrecision(2)}` : "");
  }
  if (s.status === "feasible") return "meets the budget; an ILP back-end called it optimal but bitplan could not confirm it within its tolerance";
  if (s.status === "time_limit") return "the best plan found before the time limit, with a proven lower bound";
  return "";
}

export function planLabel(plan) {
  const b = plan.budget || {};
  const bits = b.avg_bits ?? b.average_bits; // average_bits: plans stored before the one vocabulary
  const what = bits !== undefined ? `${bits} bits` : b.bytes !== undefined ? formatBytes(b.bytes)
    : Object.entries(b).map(([k, v]) => `${k} ≤ ${v}`).join(", ");
  return `Plan ${plan.id.slice(0, 6)} (${what})`;
}

// ---- selections: a point or a plan, as per-layer formats -----------------------------------

/** The per-layer formats behind a chart point id, or null when it has none (hull points do). */
export function selectionFor(id, { frontiers, plans }) {
  if (id.startsWith("plan:")) {
    const plan = plans.find((p) => `plan:${p.id}` === id);
    if (!plan) return null;
    // a unit's candidate for each of its layers (a block-grouped plan has one unit per block);
    // plans served before `units` name one layer per entry of `layers`
    const formats = plan.units
      ? Object.fromEntries(plan.units.flatMap((u) => u.layers.map((layer) => [layer, u.candidate])))
      : Object.fromEntries(plan.layers.map((l) => [l.layer, l.candidate]));
    return { id, label: planLabel(plan), damage: plan.predicted_damage, average_bits: plan.average_bits,
             costs: plan.costs, formats, plan };
  }
  const [series, cost, index] = id.split(":");
  const frontier = frontiers[cost];
  const list = frontier && { front: frontier.points, hull: frontier.hull, baseline: frontier.baselines,
                             greedy: frontier.greedy }[series];
  const point = list && list[Number(index)];
  if (!point || !point.choices) return null;
  const formats = {};
  frontier.units.forEach((u, i) => {  // frontiers stored before `unit_layers`: one layer per unit
    for (const layer of frontier.unit_layers ? frontier.unit_layers[i] : [u]) formats[layer] = frontier.candidates[point.choices[i]];
  });
  const label = point.name || `${series === "front" ? "Front" : series} point ${Number(index) + 1}`;
  return { id, label, damage: point.damage, average_bits: point.average_bits, costs: point.costs, formats, point };
}

/** A plan-shaped JSON document for a selection (what "Download JSON" saves for a front point). */
export function selectionDocument(sel, analysisId) {
  if (sel.plan) return sel.plan;
  return { analysis_id: analysisId, source: sel.label, predicted_damage: sel.damage, average_bits: sel.average_bits,
           costs: sel.costs, layers: Object.entries(sel.formats).map(([layer, candidate]) => ({ layer, candidate })) };
}

// ---- per-layer rows and heat strips --------------------------------------------------------

/**
 * One row per layer of the table: its sensitivity (the statistic per weight, with its 95% CI) and,
 * per selection, the chosen format with its bits, damage and bytes.
 */
export function layerRows(table, selections) {
  let sensMax = 0;
  const rows = table.layers.map((row) => {
    const st = row.statistics || {};
    const n = row.weights || 1;
    const sens = typeof st.mean === "number" ? st.mean / n : null;
    const ci = typeof st.ci_halfwidth === "number" ? st.ci_halfwidth / n : null;
    if (sens !== null) sensMax = Math.max(sensMax, sens + (ci || 0));
    const byCand = Object.fromEntries(row.candidates.map((c) => [c.candidate, c]));
    const cells = selections.map((sel) => {
      const cand = sel.formats[row.layer];
      const cell = byCand[cand];
      return cand ? { candidate: cand, bits: cell ? cell.bits_per_weight : null, damage: cell ? cell.damage : null,
                      bytes: cell ? cell.bytes : null } : null;
    });
    const differs = cells.length > 1 && cells.some((c) => (c && c.candidate) !== (cells[0] && cells[0].candidate));
    return { layer: row.layer, kind: row.kind, weights: row.weights, sens, ci, converged: st.converged !== false,
             samples: st.samples ?? null, cells, differs };
  });
  // Bars on a log scale: sensitivities differ by orders of magnitude between layers. A CI reaching
  // below zero is drawn to the left edge (the lower bound is then uninformative on a log scale).
  const pos = rows.filter((r) => r.sens > 0).map((r) => r.sens);
  const lo = pos.length ? Math.log10(Math.min(...pos) / 2) : 0;
  const hi = pos.length ? Math.log10(sensMax) : 1;
  const at = (v) => (v > 0 ? Math.max(0, Math.min(100, ((Math.log10(v) - lo) / (hi - lo || 1)) * 100)) : 0);
  for (const r of rows) {
    r.bar = r.sens > 0 ? { value: at(r.sens), lo: r.ci !== null ? at(r.sens - r.ci) : null,
                          hi: r.ci !== null ? at(r.sens + r.ci) : null } : null;
  }
  return { rows, sensMax, statistic: (table.provenance && table.provenance.statistic) || "Tr(H)" };
}

// Perceptually ordered ramps (viridis stops for bits, a single-hue ramp for sensitivity).
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const HEAT = [[255, 245, 235], [253, 174, 107], [230, 85, 13], [127, 39, 4]];

export function ramp(stops, t) {
  t = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0));
  const f = t * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(f));
  const u = f - i;
  const c = stops[i].map((a, k) => Math.round(a + (stops[i + 1][k] - a) * u));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

/** Colour strips over the layers: sensitivity (log scale), then the bits of each selection. */
export function heatStrips(layerData, selections) {
  const { rows } = layerData;
  const sensLogs = rows.filter((r) => r.sens > 0).map((r) => Math.log10(r.sens));
  const sLo = Math.min(...sensLogs), sHi = Math.max(...sensLogs);
  const strips = [{
    label: "Sensitivity",
    cells: rows.map((r) => ({
      layer: r.layer,
      color: r.sens > 0 ? ramp(HEAT, sHi > sLo ? (Math.log10(r.sens) - sLo) / (sHi - sLo) : 0.5) : "#ddd",
      title: `${r.layer}: ${r.sens === null ? "no statistic" : formatSci(r.sens)} per weight`,
    })),
  }];
  const bits = rows.flatMap((r) => r.cells.map((c) => (c ? c.bits : null))).filter((b) => b !== null);
  const bLo = Math.min(...bits), bHi = Math.max(...bits);
  selections.forEach((sel, k) => {
    strips.push({
      label: k === 0 ? "Bits (A)" : "Bits (B)",
      cells: rows.map((r) => {
        const c = r.cells[k];
        return { layer: r.layer, color: c && c.bits !== null ? ramp(VIRIDIS, bHi > bLo ? (c.bits - bLo) / (bHi - bLo) : 1) : "#ddd",
                 title: `${r.layer}: ${c ? c.candidate : "–"}${c && c.bits ? ` (${c.bits.toFixed(2)} bits)` : ""}` };
      }),
    });
  });
  return { strips, bitsRange: bits.length ? [bLo, bHi] : null };
}

/** Side-by-side totals of the selections, with B's change against A. */
export function compareSummary(selections) {
  const rows = [
    ["Predicted damage", (s) => s.damage, formatSci],
    ["Average bits", (s) => s.average_bits, (v) => (v === undefined ? "–" : v.toFixed(3))],
    ["Size", (s) => s.costs && s.costs.bytes, formatBytes],
  ];
  for (const k of Object.keys((selections[0] && selections[0].costs) || {})) {
    if (k !== "bytes") rows.push([k, (s) => s.costs && s.costs[k], formatCount]);
  }
  return rows.map(([label, get, fmt]) => {
    const values = selections.map(get);
    const delta = values.length === 2 && Number.isFinite(values[0]) && Number.isFinite(values[1]) && values[0] !== 0
      ? (values[1] - values[0]) / Math.abs(values[0]) : null;
    return { label, values: values.map((v) => (v === undefined ? "–" : fmt(v))), delta };
  });
}

/** Rows of the proxy-quality panel from GET /v1/analyses/{id}/proxy-quality (plain data, no DOM). */
export function proxyRows(proxy) {
  const rows = [];
  for (const [metric, stats] of Object.entries(proxy.metrics || {})) {
    const all = stats.pairs || stats;
    rows.push({ label: `${metric}: layer damage vs measured loss_delta`, spearman: all.spearman,
                kendall: all.kendall_tau_b ?? all.kendall, n: all.n });
  }
  for (const fe of proxy.frontier_evaluations || []) {
    rows.push({ label: `plan damage vs measured loss, ${fe.points_requested}-point front (${fe.cost})`,
                spearman: fe.spearman, kendall: fe.kendall_tau_b, n: fe.n });
  }
  return rows;
}
