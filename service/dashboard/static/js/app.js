// Entry point: client-side routes (/ and /analyses/{id}), in-page navigation, and the token form.

import { getToken, setToken } from "./api.js";
import { analysisPage } from "./analysis.js";
import { listPage } from "./list.js";
import { esc, shortId } from "./dom.js";

const main = document.getElementById("main");
let teardown = null;

function route() {
  if (teardown) teardown();
  document.body.dataset.state = "loading";
  const m = location.pathname.match(/^\/analyses\/([^/]+)\/?$/);
  const crumbs = document.getElementById("crumbs");
  if (m) {
    const id = decodeURIComponent(m[1]);
    crumbs.innerHTML = `<a href="/" data-nav>Analyses</a> <span aria-hidden="true">›</span> <span aria-current="page">${esc(shortId(id))}</span>`;
    document.title = `Analysis ${shortId(id)} · bitplan`;
    teardown = analysisPage(main, id);
  } else {
    crumbs.innerHTML = `<span aria-current="page">Analyses</span>`;
    document.title = "Analyses · bitplan";
    teardown = listPage(main);
  }
}

function navigate(href) {
  history.pushState({}, "", href);
  route();
  main.focus({ preventScroll: true }); // keyboard and screen-reader users land on the new content
  window.scrollTo(0, 0);
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-nav]");
  if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", route);

// ---- token --------------------------------------------------------------------------------

const form = document.getElementById("token-form");
const input = document.getElementById("token-input");
const note = document.getElementById("token-note");
const button = document.getElementById("token-button");

function showTokenForm(message) {
  form.hidden = false;
  note.textContent = message || "";
  button.setAttribute("aria-expanded", "true");
  input.focus();
}

function updateTokenButton() {
  button.textContent = getToken() ? "API token ✓" : "API token";
  button.setAttribute("aria-expanded", String(!form.hidden));
}

button.addEventListener("click", () => {
  if (form.hidden) showTokenForm("");
  else { form.hidden = true; updateTokenButton(); }
});
form.addEventListener("submit", (e) => {
  e.preventDefault();
  setToken(input.value);
  input.value = "";
  form.hidden = true;
  updateTokenButton();
  route();
});
document.getElementById("token-clear").addEventListener("click", () => {
  setToken("");
  input.value = "";
  note.textContent = "Token forgotten.";
  updateTokenButton();
});
window.addEventListener("auth-required", (e) => {
  if (form.hidden) showTokenForm(`This server needs a bearer token (${e.detail}). Paste one made with \`bitplan token create\`.`);
});

updateTokenButton();
route();
