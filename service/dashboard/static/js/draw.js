// Drawing, no computing: renders the structures data.js builds. The only module that writes SVG.
//
// Hand-written SVG rather than vendored plotly.js: plotly's minified bundle is ~3.5 MB of script to
// parse on every load (a good part of the 1 s budget on a slow laptop) for a scatter plot, a step
// line and colour strips; SVG elements are also plain DOM, so keyboard focus, ARIA and the browser
// tests reach them directly.

import { esc } from "./dom.js";

const M = { top: 14, right: 18, bottom: 46, left: 70 };
const MARKERS = {
  front: (x, y) => `<circle cx="${x}" cy="${y}" r="3.6"/>`,
  hull: () => "",
  baseline: (x, y) => `<path d="M${x} ${y - 7}L${x + 7} ${y}L${x} ${y + 7}L${x - 7} ${y}Z"/>`,
  greedy: (x, y) => `<path d="M${x - 5} ${y - 5}L${x + 5} ${y + 5}M${x - 5} ${y + 5}L${x + 5} ${y - 5}"/>`,
  plan: (x, y) => `<rect x="${x - 5.5}" y="${y - 5.5}" width="11" height="11"/>`,
  measured: (x, y) => `<path d="M${x} ${y - 7}L${x + 6.5} ${y + 5}L${x - 6.5} ${y + 5}Z"/>`,
};

function scales(chart, width, height) {
  const right = chart.measured ? 64 : M.right;
  const w = width - M.left - right, h = height - M.top - M.bottom;
  const [x0, x1] = chart.xDomain;
  const sx = (v) => M.left + ((v - x0) / (x1 - x0)) * w;
  const [y0, y1] = chart.yDomain;
  const sy = chart.logY
    ? (v) => M.top + h - ((Math.log10(v) - Math.log10(y0)) / (Math.log10(y1) - Math.log10(y0))) * h
    : (v) => M.top + h - ((v - y0) / (y1 - y0)) * h;
  let sy2 = null;
  if (chart.measured) {
    const [m0, m1] = chart.measured.yDomain;
    sy2 = (v) => M.top + h - ((v - m0) / (m1 - m0)) * h;
  }
  return { sx, sy, sy2, w, h, right };
}

const r1 = (v) => Math.round(v * 10) / 10;

// Marker labels are 10.5px text (dashboard.css): a conservative width per character and line height,
// so the boxes placeLabel keeps apart are never smaller than what the browser draws.
const LABEL_CHAR_W = 6.6, LABEL_H = 13;

/**
 * A spot for a marker label next to its point that overlaps no label already `placed` (boxes it
 * appends to) and stays inside `bounds`: right-above first, then right-below, left, then further
 * out. Null when nowhere near the point is free (the point's tooltip and list still name it).
 */
function placeLabel([px, py], text, placed, bounds) {
  const width = text.length * LABEL_CHAR_W, height = LABEL_H;
  const tries = [];
  for (const dy of [-8, 16, -22, 30, -36, 44]) {
    tries.push([px + 9, py + dy], [px - 9 - width, py + dy]);
  }
  for (const [x, y] of tries) {
    const box = { x0: x, x1: x + width, y0: y - height + 3, y1: y + 3 };
    if (box.x0 < bounds.left || box.x1 > bounds.right + 16 || box.y0 < bounds.top - 12 || box.y1 > bounds.bottom) continue;
    if (placed.some((b) => b.x0 < box.x1 && box.x0 < b.x1 && b.y0 < box.y1 && box.y0 < b.y1)) continue;
    placed.push(box);
    return { x: r1(x), y: r1(y) };
  }
  return null;
}

/**
 * Draws `chart` into `host` (an element whose width it fills). `selected` maps point ids to "A"/"B";
 * `active` is the keyboard's current point id. Returns the point geometry for hit-testing tooltips.
 */
export function renderChart(host, chart, { selected = {}, active = null } = {}) {
  const width = Math.max(280, host.clientWidth || 600);
  const height = width < 520 ? 280 : 400;
  if (chart.empty) {
    host.innerHTML = `<p class="note">No points to draw on this axis.</p>`;
    return;
  }
  const { sx, sy, sy2, w, h, right } = scales(chart, width, height);
  const parts = [];
  parts.push(`<svg class="chart-svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" ` +
    `role="img" aria-label="${esc(`${chart.yLabel} against ${chart.xLabel}`)}">`);
  // grid and ticks
  parts.push(`<g class="grid">`);
  // Labels need about 64px each: on a phone every other tick goes.
  const every = Math.max(1, Math.ceil((chart.xTicks.length * 64) / w));
  for (const t of chart.xTicks.filter((_, i) => i % every === 0)) {
    const x = r1(sx(t.value));
    parts.push(`<line x1="${x}" x2="${x}" y1="${M.top}" y2="${M.top + h}"/>`);
    parts.push(`<text class="tick" x="${x}" y="${M.top + h + 16}" text-anchor="middle">${esc(t.label)}</text>`);
  }
  for (const t of chart.yTicks) {
    const y = r1(sy(t.value));
    parts.push(`<line x1="${M.left}" x2="${M.left + w}" y1="${y}" y2="${y}"/>`);
    parts.push(`<text class="tick" x="${M.left - 6}" y="${y + 4}" text-anchor="end">${esc(t.label)}</text>`);
  }
  if (chart.measured) {
    for (const t of chart.measured.yTicks) {
      const y = r1(sy2(t.value));
      parts.push(`<text class="tick measured" x="${M.left + w + 6}" y="${y + 4}">${esc(t.label)}</text>`);
    }
  }
  parts.push(`</g>`);
  parts.push(`<rect class="frame" x="${M.left}" y="${M.top}" width="${w}" height="${h}"/>`);
  parts.push(`<text class="axis-label" x="${M.left + w / 2}" y="${height - 6}" text-anchor="middle">${esc(chart.xLabel)}</text>`);
  parts.push(`<text class="axis-label" transform="translate(14 ${M.top + h / 2}) rotate(-90)" text-anchor="middle">` +
    `${esc(chart.yLabel)}${chart.logY ? " (log)" : ""}</text>`);
  if (chart.measured) {
    parts.push(`<text class="axis-label measured" transform="translate(${width - 8} ${M.top + h / 2}) rotate(90)" ` +
      `text-anchor="middle">${esc(chart.measured.label)}</text>`);
  }
  parts.push(`<g clip-path="none">`);
  const all = [];
  const drawSeries = (s, ysc) => {
    if (!s.points.length) return;
    const pts = s.points.map((p) => [r1(sx(p.x)), r1(ysc(p.y))]);
    if (s.kind === "step") {
      // The best damage within a budget only drops at the next exact point: a staircase, not a line.
      let d = `M${pts[0][0]} ${pts[0][1]}`;
      for (let i = 1; i < pts.length; i++) d += `H${pts[i][0]}V${pts[i][1]}`;
      parts.push(`<path class="line s-${s.key}" d="${d}"/>`);
    } else if (s.kind === "line") {
      parts.push(`<polyline class="line s-${s.key}" points="${pts.map((p) => p.join(",")).join(" ")}"/>`);
    }
    const draw = MARKERS[s.key];
    if (!draw || s.key === "hull") return;
    parts.push(`<g class="pts s-${s.key}">`);
    s.points.forEach((p, i) => {
      const [x, y] = pts[i];
      all.push({ p, x, y });
      parts.push(`<g class="pt" data-id="${esc(p.id)}">${draw(x, y)}</g>`);
    });
    parts.push(`</g>`);
    if (s.key === "baseline") {
      const placed = [];
      s.points.forEach((p, i) => {
        const text = p.label.replace(/^uniform /, "");
        const spot = placeLabel(pts[i], text, placed, { left: M.left, top: M.top, right: M.left + w, bottom: M.top + h });
        if (spot) parts.push(`<text class="marker-label" x="${spot.x}" y="${spot.y}">${esc(text)}</text>`);
      });
    }
  };
  // Front points and plans drawn last: where a greedy or uniform point coincides with an exact one,
  // the click lands on the exact point (the list below the chart reaches every point anyway).
  const order = ["hull", "greedy", "baseline", "front", "plan"];
  const rank = (s) => (order.includes(s.key) ? order.indexOf(s.key) : order.length);
  for (const s of [...chart.series].sort((a, b) => rank(a) - rank(b))) drawSeries(s, sy);
  if (chart.measured) drawSeries({ key: "measured", kind: "line", points: chart.measured.points }, sy2);
  parts.push(`</g>`);
  // selection rings on top of everything
  for (const { p, x, y } of all) {
    const tag = selected[p.id];
    if (tag) {
      parts.push(`<g class="sel sel-${tag}"><circle cx="${x}" cy="${y}" r="10"/>` +
        `<text x="${x}" y="${y - 14}" text-anchor="middle">${tag}</text></g>`);
    }
    if (p.id === active) parts.push(`<circle class="active-ring" cx="${x}" cy="${y}" r="13"/>`);
  }
  parts.push(`</svg><div class="tooltip" hidden></div>`);
  host.innerHTML = parts.join("");
  host._points = all;
}

/** Shows the totals of point `id` in the chart's tooltip (null hides it). */
export function showTooltip(host, id) {
  const tip = host.querySelector(".tooltip");
  if (!tip) return;
  const hit = id && (host._points || []).find((q) => q.p.id === id);
  if (!hit) { tip.hidden = true; return; }
  tip.innerHTML = `<strong>${esc(hit.p.label)}</strong><dl>` +
    hit.p.totals.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("") + `</dl>`;
  tip.hidden = false;
  const svg = host.querySelector("svg");
  const scale = svg ? svg.clientWidth / svg.viewBox.baseVal.width : 1;
  const left = hit.x * scale, top = hit.y * scale;
  const flip = left > host.clientWidth * 0.6;
  tip.style.left = flip ? "" : `${left + 14}px`;
  tip.style.right = flip ? `${host.clientWidth - left + 14}px` : "";
  tip.style.top = `${Math.max(0, top - 10)}px`;
}

/** The legend as HTML (it wraps on narrow screens, unlike text inside the SVG). */
export function renderLegend(host, chart) {
  const items = chart.series.filter((s) => s.points.length).map((s) => [s.key, s.label, s.points.length]);
  if (chart.measured) items.push(["measured", chart.measured.label, chart.measured.points.length]);
  host.innerHTML = items.map(([key, label, n]) =>
    `<li><svg width="16" height="16" aria-hidden="true" class="pts s-${key}">${
      key === "hull" ? `<line x1="1" y1="8" x2="15" y2="8" class="line s-hull"/>` : (MARKERS[key] || MARKERS.front)(8, 8)
    }</svg>${esc(label)} <span class="count">(${n})</span></li>`).join("");
}

/** Colour strips over the layers; each cell names its layer on hover. */
export function renderStrips(host, strips) {
  host.innerHTML = strips.strips.map((s) => {
    const n = s.cells.length;
    const rects = s.cells.map((c, i) =>
      `<rect x="${i}" y="0" width="1.02" height="1" fill="${c.color}" data-layer="${esc(c.layer)}"><title>${esc(c.title)}</title></rect>`).join("");
    return `<div class="strip"><span class="strip-label">${esc(s.label)}</span>` +
      `<svg viewBox="0 0 ${n} 1" preserveAspectRatio="none" role="img" aria-label="${esc(s.label)} per layer">${rects}</svg></div>`;
  }).join("");
}
