// Calls to bitplan's API v1. The only module that touches fetch and the token.
//
// The token lives in sessionStorage: it survives reloads of this tab but not the tab itself, and
// no other site can read it. A 401 asks the page (via the "auth-required" event) for a token.

const TOKEN_KEY = "bitplan.token";

export class ApiError extends Error {
  constructor(status, detail, field) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.field = field || null;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token.trim());
  else sessionStorage.removeItem(TOKEN_KEY);
}

function newKey() {
  // crypto.randomUUID needs a secure context; loopback is one, a plain-http LAN address is not.
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

export async function request(path, { method = "GET", body, idempotent = false, raw = false } = {}) {
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  // A retried POST (double click, flaky network) must not create a second plan.
  if (idempotent) headers["Idempotency-Key"] = newKey();
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!resp.ok) {
    let detail = resp.statusText, field = null;
    try {
      const data = await resp.json();
      detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      field = data.field || null;
    } catch { /* not JSON: keep the status text */ }
    if (resp.status === 401) window.dispatchEvent(new CustomEvent("auth-required", { detail }));
    throw new ApiError(resp.status, detail, field);
  }
  return raw ? resp : resp.json();
}

/** GET that answers null on 404: how optional endpoints (evaluations, exports) are detected. */
export async function optional(path) {
  try {
    return await request(path);
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return null;
    throw err;
  }
}

export const api = {
  analyses: () => request("/v1/analyses?limit=200"),
  analysis: (id) => request(`/v1/analyses/${encodeURIComponent(id)}`),
  model: (id) => request(`/v1/models/${encodeURIComponent(id)}`),
  dataset: (id) => request(`/v1/datasets/${encodeURIComponent(id)}`),
  table: (id) => request(`/v1/analyses/${encodeURIComponent(id)}/table`),
  frontier: (id, cost, points) =>
    request(`/v1/analyses/${encodeURIComponent(id)}/frontier?cost=${encodeURIComponent(cost)}&points=${points}`),
  plans: (id) => request(`/v1/analyses/${encodeURIComponent(id)}/plans`),
  createPlan: (id, budget) =>
    request(`/v1/analyses/${encodeURIComponent(id)}/plans`, { method: "POST", body: { budget }, idempotent: true }),
  evaluations: (id) => optional(`/v1/analyses/${encodeURIComponent(id)}/evaluations`),
  // 409 until something measured exists to rank against: treated like an absent endpoint.
  proxyQuality: (id) => optional(`/v1/analyses/${encodeURIComponent(id)}/proxy-quality`)
    .catch((err) => { if (err instanceof ApiError && err.status === 409) return null; throw err; }),
  openapi: () => fetch("/openapi.json").then((r) => (r.ok ? r.json() : null)).catch(() => null),
};
