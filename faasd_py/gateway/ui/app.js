// faasd-py portal: plain DOM over the gateway's own API, same origin, the browser's basic-auth session.
//
// Every piece of API data reaches the page through textContent or a property (see h()); nothing is
// parsed as HTML. Every request goes through api()/call() with a literal method and path, so
// tests/unit/test_ui.py can check each path against the gateway's router.

const BASE = location.origin + location.pathname.replace(/\/ui\/.*$/, ""); // origin never carries credentials
const LIST_POLL_MS = 3500;
const DETAIL_POLL_MS = 2500;
const LOG_TAIL = 100;
const MAX_LOG_LINES = 2000;
const MAX_SHOWN_CHARS = 256 * 1024;
const MAX_TOASTS = 3;
const NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const EXT_LABEL = "com.openfaas.ui.ext";
const CONTENT_TYPES = { text: "text/plain", json: "application/json", binary: "application/octet-stream" };

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const numberFmt = new Intl.NumberFormat();

const state = {
  namespaces: [],
  ns: "",
  functions: [],
  listLoaded: false,
  selected: "", // function name
  detail: null, // last GET /system/function body for `selected`
  detailKey: "", // JSON of `detail`, to skip re-rendering unchanged data
  tab: "overview",
  logsFor: "", // "name.ns" whose logs are on screen
  logsAbort: null,
  secrets: [],
  editing: null, // the function being redeployed, or null for a new one
};

// --- DOM helpers -----------------------------------------------------------------------------

/** Create an element; strings become text nodes, never markup. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") el.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key in el && !key.includes("-")) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function setText(id, value) {
  $(id).textContent = value === undefined || value === null || value === "" ? "—" : String(value);
}

function toast(message, kind = "info") {
  const el = h("div", { class: `toast ${kind}`, text: message });
  const box = $("toasts");
  box.append(el);
  while (box.childElementCount > MAX_TOASTS) box.firstElementChild.remove();
  setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
}

function showBanner(message) {
  const banner = $("banner");
  banner.textContent = message;
  banner.hidden = !message;
}

function fmtCount(n) {
  return numberFmt.format(Math.round(Number(n) || 0));
}

function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}

function fmtDate(d) {
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtAgo(d) {
  const s = Math.max(0, (Date.now() - d.getTime()) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function fmtDuration(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function statusOf(fn) {
  if (!fn.replicas) return { label: "Scaled to zero", cls: "zero" };
  if (fn.availableReplicas > 0) return { label: "Ready", cls: "ready" };
  return { label: "Not ready", cls: "not-ready" };
}

function setBadge(el, { label, cls }) {
  el.textContent = label;
  el.className = `badge ${cls}`;
}

// --- API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** fetch relative to the gateway root; resolves with the Response whatever its status. */
function call(method, path, { json, body, headers = {}, signal } = {}) {
  const init = { method, headers: { ...headers }, signal, credentials: "same-origin", cache: "no-store" };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  return fetch(BASE + path, init);
}

/** Like call(), but a non-2xx answer throws ApiError carrying the gateway's error text. */
async function api(method, path, options) {
  const res = await call(method, path, options);
  if (!res.ok) {
    const text = (await res.text().catch(() => "")).trim();
    throw new ApiError(res.status, text || res.statusText || `HTTP ${res.status}`);
  }
  return res;
}

function errorText(err) {
  if (err instanceof ApiError) return `${err.status}: ${err.message}`;
  return err && err.message ? err.message : String(err);
}

/** Runs task every `ms`, never overlapping; kick() runs it now. Skips while the tab is hidden. */
class Poller {
  constructor(task, ms) {
    this.task = task;
    this.ms = ms;
    this.timer = 0;
    this.running = false;
    this.again = false;
  }

  start() {
    this.kick();
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = 0;
  }

  async kick() {
    clearTimeout(this.timer);
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    try {
      if (!document.hidden) await this.task();
    } catch (err) {
      console.warn("poll failed", err);
    } finally {
      this.running = false;
    }
    if (this.again) {
      this.again = false;
      this.kick();
    } else {
      this.timer = setTimeout(() => this.kick(), this.ms);
    }
  }
}

// --- URL hash: #ns=...&fn=...&tab=... (reload and back keep the view) --------------------------

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  return { ns: params.get("ns") || "", fn: params.get("fn") || "", tab: params.get("tab") || "" };
}

function writeHash(push) {
  const params = new URLSearchParams();
  if (state.ns) params.set("ns", state.ns);
  if (state.selected) params.set("fn", state.selected);
  if (state.selected && state.tab !== "overview") params.set("tab", state.tab);
  const hash = `#${params}`;
  if (hash === location.hash) return;
  if (push) history.pushState(null, "", hash);
  else history.replaceState(null, "", hash);
}

// localStorage can be switched off or full; the namespace choice is only a convenience.
function remembered(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

function remember(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    // not remembered, that is all
  }
}

// --- namespaces and info ---------------------------------------------------------------------

async function loadNamespaces() {
  let names = [];
  try {
    const res = await api("GET", "/system/namespaces");
    names = (await res.json()).filter((n) => typeof n === "string" && n);
  } catch (err) {
    toast(`Could not list namespaces: ${errorText(err)}`, "error");
  }
  if (!names.length) names = ["openfaas-fn"];
  state.namespaces = names;
  for (const select of [$("namespace"), $("dep-namespace")]) {
    select.replaceChildren(...names.map((n) => h("option", { value: n, text: n })));
  }
  const wanted = readHash().ns || remembered("faasd-py.ns") || "";
  state.ns = names.includes(wanted) ? wanted : names[0];
  $("namespace").value = state.ns;
}

async function loadInfo() {
  try {
    const info = await (await api("GET", "/system/info")).json();
    const release = info?.version?.release || info?.provider?.version?.release;
    if (release) $("version").textContent = `v${release}`;
  } catch {
    // the version is decoration; the list poll reports a gateway that is down
  }
}

function switchNamespace(ns) {
  if (ns === state.ns) return;
  state.ns = ns;
  remember("faasd-py.ns", ns);
  $("namespace").value = ns;
  state.functions = [];
  state.listLoaded = false;
  selectFunction("", false);
  renderList();
  writeHash(true);
  listPoller.kick();
}

// --- function list ---------------------------------------------------------------------------

const listItems = new Map(); // name -> {li, button, name, badge, replicas, count, image}

async function refreshList() {
  const ns = state.ns;
  let functions;
  try {
    const res = await api("GET", `/system/functions?namespace=${enc(ns)}`);
    functions = await res.json();
    showBanner("");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      showBanner("Not authorised: reload the page and sign in again.");
    } else {
      showBanner(`Cannot load functions from the gateway (${errorText(err)}). Retrying…`);
    }
    return;
  }
  if (ns !== state.ns) return; // the namespace changed while we waited
  state.functions = (Array.isArray(functions) ? functions : []).sort((a, b) => a.name.localeCompare(b.name));
  state.listLoaded = true;
  renderList();
}

function makeListItem(name) {
  const parts = {
    name: h("span", { class: "name", text: name }),
    count: h("span", { class: "count" }),
    badge: h("span", { class: "badge" }),
    replicas: h("span"),
    image: h("span", { class: "image" }),
  };
  parts.button = h(
    "button",
    { type: "button", class: "fn-item", onclick: () => selectFunction(name, true) },
    parts.name,
    parts.count,
    h("span", { class: "meta" }, parts.badge, parts.replicas),
    parts.image,
  );
  parts.li = h("li", {}, parts.button);
  return parts;
}

function renderList() {
  const filter = $("search").value.trim().toLowerCase();
  const shown = state.functions.filter((fn) => fn.name.toLowerCase().includes(filter));
  const ul = $("fn-list");
  const keep = new Set();
  shown.forEach((fn, i) => {
    let item = listItems.get(fn.name);
    if (!item) {
      item = makeListItem(fn.name);
      listItems.set(fn.name, item);
    }
    setBadge(item.badge, statusOf(fn));
    item.replicas.textContent = `${fn.availableReplicas ?? 0}/${fn.replicas ?? 0} replicas`;
    const calls = Math.round(Number(fn.invocationCount) || 0);
    item.count.textContent = `${fmtCount(calls)} call${calls === 1 ? "" : "s"}`;
    item.count.title = `${fmtCount(fn.invocationCount)} invocations`;
    item.image.textContent = fn.image || "";
    item.image.title = fn.image || "";
    item.button.setAttribute("aria-current", String(fn.name === state.selected));
    if (ul.children[i] !== item.li) ul.insertBefore(item.li, ul.children[i] || null);
    keep.add(fn.name);
  });
  for (const [name, item] of listItems) {
    if (!keep.has(name)) {
      item.li.remove();
      listItems.delete(name);
    }
  }

  const total = state.functions.length;
  const ready = state.functions.filter((fn) => fn.availableReplicas > 0).length;
  const empty = $("list-empty");
  if (!state.listLoaded) {
    $("list-summary").textContent = "Loading…";
    empty.hidden = true;
  } else {
    $("list-summary").textContent = filter
      ? `${shown.length} of ${total} functions match`
      : `${total} function${total === 1 ? "" : "s"}, ${ready} ready`;
    empty.hidden = shown.length > 0;
    empty.textContent = total ? "No function matches the filter." : `No functions in ${state.ns} yet.`;
  }
  $("placeholder-ns").textContent = state.ns;
}

function onListKeydown(ev) {
  if (!["ArrowDown", "ArrowUp", "Home", "End"].includes(ev.key)) return;
  const buttons = [...$("fn-list").querySelectorAll("button.fn-item")];
  if (!buttons.length) return;
  const i = buttons.indexOf(document.activeElement);
  let next = 0;
  if (ev.key === "ArrowDown") next = Math.min(buttons.length - 1, i + 1);
  else if (ev.key === "ArrowUp") next = Math.max(0, i - 1);
  else if (ev.key === "End") next = buttons.length - 1;
  buttons[next].focus();
  ev.preventDefault();
}

// --- selected function -----------------------------------------------------------------------

function selectFunction(name, push) {
  if (name !== state.selected) {
    stopLogs();
    clearLogs();
    state.logsFor = "";
    $("logs-follow").checked = false;
    $("inv-response").hidden = true;
    $("inv-body").value = "";
    $("inv-path").value = "";
    $("inv-hint").textContent = "";
    state.detail = null;
    state.detailKey = "";
  }
  state.selected = name;
  for (const [fnName, item] of listItems) item.button.setAttribute("aria-current", String(fnName === name));
  $("detail").hidden = !name;
  $("no-selection").hidden = Boolean(name);
  document.title = name ? `${name} · faasd-py` : "faasd-py";
  if (!name) {
    detailPoller.stop();
    writeHash(push);
    return;
  }
  $("fn-name").textContent = name;
  $("fn-status").hidden = true;
  $("fn-url").value = `${BASE}/function/${name}.${state.ns}`;
  $("copy-status").textContent = "";
  const fromList = state.functions.find((fn) => fn.name === name);
  if (fromList) renderDetail(fromList);
  presetInvokeMode();
  selectTab(state.tab, false);
  writeHash(push);
  if (push && matchMedia("(max-width: 820px)").matches) $("detail").scrollIntoView({ block: "start" });
  detailPoller.kick();
}

async function refreshDetail() {
  const name = state.selected;
  const ns = state.ns;
  if (!name) return;
  try {
    const res = await api("GET", `/system/function/${enc(name)}?namespace=${enc(ns)}`);
    const fn = await res.json();
    if (name !== state.selected || ns !== state.ns) return;
    renderDetail(fn);
  } catch (err) {
    if (name !== state.selected || ns !== state.ns) return;
    if (err instanceof ApiError && err.status === 404) {
      toast(`Function ${name} no longer exists in ${ns}.`);
      selectFunction("", false);
      listPoller.kick();
    }
  }
}

function renderDetail(fn) {
  const key = JSON.stringify(fn);
  const firstForFunction = !state.detail;
  state.detail = fn;
  if (key === state.detailKey) return;
  state.detailKey = key;
  if (firstForFunction) presetInvokeMode();

  const status = statusOf(fn);
  setBadge($("fn-status"), status);
  $("fn-status").hidden = false;
  setText("st-replicas", fn.replicas ?? 0);
  setText("st-available", fn.availableReplicas ?? 0);
  setText("st-invocations", fmtCount(fn.invocationCount));
  const created = fn.createdAt ? new Date(fn.createdAt) : null;
  if (created && !Number.isNaN(created.getTime()) && created.getUTCFullYear() > 1) {  // year 1: unknown (Go's zero time)
    $("st-created").replaceChildren(h("span", { text: fmtDate(created) }), h("span", { class: "muted", text: fmtAgo(created) }));
    $("st-created").title = fn.createdAt;
  } else {
    setText("st-created", "");
  }

  const limits = fn.limits || {};
  const requests = fn.requests || {};
  const code = (text) => (text ? h("code", { text }) : "—");
  const resources = (r) => [r.memory && `memory ${r.memory}`, r.cpu && `cpu ${r.cpu}`].filter(Boolean).join(", ") || "—";
  const chips = (items) => (items && items.length ? h("span", { class: "chips" }, items.map((s) => h("span", { class: "chip", text: s }))) : "—");
  const rows = [
    ["Status", `${status.label} (${fn.availableReplicas ?? 0} of ${fn.replicas ?? 0} replicas available)`],
    ["Namespace", fn.namespace || state.ns],
    ["Image", code(fn.image)],
    ["envProcess", code(fn.envProcess)],
    ["Limits", resources(limits)],
    ["Requests", resources(requests)],
    ["Read-only root fs", fn.readOnlyRootFilesystem ? "yes" : "no"],
    ["Secrets", chips(fn.secrets)],
  ];
  if (fn.constraints && fn.constraints.length) rows.push(["Constraints", chips(fn.constraints)]);
  $("fn-props").replaceChildren(...rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));

  $("fn-kv").replaceChildren(
    kvGroup("Environment variables", fn.envVars),
    kvGroup("Labels", fn.labels),
    kvGroup("Annotations", fn.annotations),
  );

  const zero = !fn.replicas;
  $("inv-hint").textContent = zero
    ? "This function is scaled to zero: invoking it starts a replica first, so the first call takes longer."
    : status.cls === "not-ready"
      ? "No replica is ready yet: the call waits for one."
      : "";
  renderListItemFromDetail(fn);
}

function renderListItemFromDetail(fn) {
  const i = state.functions.findIndex((f) => f.name === fn.name);
  if (i >= 0) {
    state.functions[i] = { ...state.functions[i], ...fn };
    renderList();
  }
}

/** Text with a line-break opportunity after each dot, so label keys wrap at their dots. */
function breakable(text) {
  return text.split(/(?<=\.)/).flatMap((part, i) => (i ? [h("wbr"), part] : [part]));
}

function kvGroup(title, map) {
  const entries = Object.entries(map || {}).sort(([a], [b]) => a.localeCompare(b));
  const body = entries.length
    ? h("dl", { class: "kv" }, entries.map(([k, v]) => [h("dt", {}, breakable(k)), h("dd", { text: v })]))
    : h("p", { class: "empty small", text: "None" });
  return h("section", { class: "kv-group" }, h("h2", { text: `${title} (${entries.length})` }), body);
}

// --- tabs ------------------------------------------------------------------------------------

const TABS = ["overview", "invoke", "logs"];

function selectTab(tab, focus) {
  if (!TABS.includes(tab)) tab = "overview";
  state.tab = tab;
  for (const t of TABS) {
    const button = $(`tab-${t}`);
    const on = t === tab;
    button.setAttribute("aria-selected", String(on));
    button.tabIndex = on ? 0 : -1;
    $(`panel-${t}`).hidden = !on;
    if (on && focus) button.focus();
  }
  if (tab === "logs" && state.selected && state.logsFor !== `${state.selected}.${state.ns}`) loadLogs(false);
  writeHash(false);
}

function onTabKeydown(ev) {
  const i = TABS.indexOf(state.tab);
  const moves = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: TABS.length - 1 };
  if (!(ev.key in moves)) return;
  selectTab(TABS[(moves[ev.key] + TABS.length) % TABS.length], true);
  ev.preventDefault();
}

// --- copy URL --------------------------------------------------------------------------------

async function copyUrl() {
  const input = $("fn-url");
  let ok = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(input.value);
      ok = true;
    }
  } catch {
    ok = false;
  }
  if (!ok) {
    input.select(); // plain-http origins have no async clipboard: fall back to the selection
    ok = document.execCommand && document.execCommand("copy");
  }
  $("copy-status").textContent = ok ? "Copied" : "Select the URL and copy it";
  setTimeout(() => ($("copy-status").textContent = ""), 2500);
}

// --- scale and delete ------------------------------------------------------------------------

async function scale(replicas) {
  const name = state.selected;
  const ns = state.ns;
  if (!name) return;
  const target = replicas === "+1" ? (state.detail?.replicas ?? 0) + 1 : replicas;
  try {
    await api("POST", `/system/scale-function/${enc(name)}`, {
      json: { serviceName: name, namespace: ns, replicas: target },
    });
    toast(target === 0 ? `Paused ${name} (scaled to zero)` : `Scaling ${name} to ${target} replica${target === 1 ? "" : "s"}`);
  } catch (err) {
    toast(`Scaling ${name} failed: ${errorText(err)}`, "error");
  }
  detailPoller.kick();
  listPoller.kick();
}

async function deleteFunction() {
  const name = state.selected;
  const ns = state.ns;
  if (!name) return;
  const ok = await confirmAction(
    `Delete ${name}?`,
    `The function ${name} in namespace ${ns} will be removed, with its replicas. This cannot be undone.`,
    "Delete function",
  );
  if (!ok) return;
  try {
    await api("DELETE", "/system/functions", { json: { functionName: name, namespace: ns } });
    toast(`Deleted ${name}`);
    selectFunction("", true);
  } catch (err) {
    toast(`Deleting ${name} failed: ${errorText(err)}`, "error");
  }
  listPoller.kick();
}

function confirmAction(title, text, okLabel) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// --- invoke ----------------------------------------------------------------------------------

function invokeMode() {
  return document.querySelector('input[name="inv-mode"]:checked').value;
}

function presetInvokeMode() {
  const ext = state.detail?.labels?.[EXT_LABEL];
  const mode = ext ? "binary" : "text";
  document.querySelector(`input[name="inv-mode"][value="${mode}"]`).checked = true;
}

async function invoke(ev) {
  ev.preventDefault();
  const name = state.selected;
  const ns = state.ns;
  if (!name) return;
  const mode = invokeMode();
  const method = $("inv-method").value;
  const raw = $("inv-body").value;
  if (mode === "json" && raw.trim()) {
    try {
      JSON.parse(raw);
    } catch (err) {
      $("inv-hint").textContent = `The body is not valid JSON: ${err.message}`;
      $("inv-body").focus();
      return;
    }
  }
  let suffix = $("inv-path").value.trim();
  if (suffix && !suffix.startsWith("/") && !suffix.startsWith("?")) suffix = `/${suffix}`;
  const body = method === "GET" ? undefined : raw;
  const submit = $("inv-submit");
  submit.disabled = true;
  submit.classList.add("busy");
  submit.textContent = state.detail && !state.detail.replicas ? "Waking…" : "Invoking…";
  const started = performance.now();
  try {
    const res = await call(method, `/function/${enc(name)}.${enc(ns)}${suffix}`, {
      body,
      headers: { "Content-Type": CONTENT_TYPES[mode] },
    });
    const blob = await res.blob();
    await showResponse(res, blob, performance.now() - started, mode, name);
  } catch (err) {
    showFailure(err, performance.now() - started);
  } finally {
    submit.disabled = false;
    submit.classList.remove("busy");
    submit.textContent = "Invoke";
    detailPoller.kick();
  }
}

async function showResponse(res, blob, elapsed, mode, name) {
  $("inv-response").hidden = false;
  const cls = res.status >= 500 ? "s5xx" : res.status >= 400 ? "s4xx" : "s2xx";
  setBadge($("inv-status"), { label: `${res.status} ${res.statusText}`.trim(), cls });
  $("inv-rtt").textContent = fmtDuration(elapsed);
  setText("inv-duration", res.headers.get("X-Duration-Seconds"));
  setText("inv-callid", res.headers.get("X-Call-Id"));
  const headers = [...res.headers.entries()].sort(([a], [b]) => a.localeCompare(b));
  $("inv-headers").replaceChildren(...headers.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]));

  const out = $("inv-body-out");
  if (mode === "binary" && res.ok) {
    const ext = state.detail?.labels?.[EXT_LABEL] || "bin";
    const file = `${name}-${res.headers.get("X-Call-Id") || Date.now()}.${ext.replace(/[^A-Za-z0-9]/g, "")}`;
    const url = URL.createObjectURL(blob);
    const link = h("a", { href: url, download: file, text: file });
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    out.replaceChildren(`Saved ${fmtCount(blob.size)} bytes as `, link);
    return;
  }
  let text = await blob.text();
  const type = res.headers.get("Content-Type") || "";
  if (mode === "json" || type.includes("json")) {
    try {
      text = JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      // not JSON after all: show it as it came
    }
  }
  if (text.length > MAX_SHOWN_CHARS) {
    text = `${text.slice(0, MAX_SHOWN_CHARS)}\n… (${fmtCount(blob.size)} bytes in total, the rest is not shown)`;
  }
  out.textContent = text || "(empty body)";
}

function showFailure(err, elapsed) {
  $("inv-response").hidden = false;
  setBadge($("inv-status"), { label: "Request failed", cls: "error" });
  $("inv-rtt").textContent = fmtDuration(elapsed);
  setText("inv-duration", "");
  setText("inv-callid", "");
  $("inv-headers").replaceChildren();
  $("inv-body-out").textContent = errorText(err);
}

// --- logs ------------------------------------------------------------------------------------

function stopLogs() {
  if (state.logsAbort) {
    state.logsAbort.abort();
    state.logsAbort = null;
  }
}

function clearLogs() {
  $("logs-out").replaceChildren();
  $("logs-status").textContent = "";
}

async function loadLogs(follow) {
  const name = state.selected;
  const ns = state.ns;
  if (!name) return;
  stopLogs();
  clearLogs();
  const ctl = new AbortController();
  state.logsAbort = ctl;
  state.logsFor = `${name}.${ns}`;
  $("logs-follow").checked = follow;
  $("logs-status").textContent = follow ? "Following…" : "Loading…";
  let lines = 0;
  try {
    const res = await api(
      "GET",
      `/system/logs?name=${enc(name)}&namespace=${enc(ns)}&tail=${LOG_TAIL}&follow=${follow}`,
      { signal: ctl.signal },
    );
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.trim()) {
          appendLog(line);
          lines += 1;
        }
      }
    }
    buffer += decoder.decode();
    if (buffer.trim()) {
      appendLog(buffer);
      lines += 1;
    }
    if (ctl.signal.aborted) return;
    if (!lines) $("logs-out").append(h("p", { class: "empty", text: "No log lines." }));
    $("logs-status").textContent = follow ? "The stream ended." : `${lines} line${lines === 1 ? "" : "s"}`;
  } catch (err) {
    if (ctl.signal.aborted || err.name === "AbortError") return;
    $("logs-status").textContent = `Could not read logs: ${errorText(err)}`;
  } finally {
    if (state.logsAbort === ctl) {
      state.logsAbort = null;
      $("logs-follow").checked = false;
    }
  }
}

function appendLog(line) {
  const out = $("logs-out");
  const atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 24;
  let row;
  try {
    const msg = JSON.parse(line);
    const ts = msg.timestamp ? new Date(msg.timestamp) : null;
    row = h(
      "div",
      { class: "log-line" },
      ts && !Number.isNaN(ts.getTime()) ? h("span", { class: "ts", title: msg.timestamp, text: fmtDate(ts) }) : null,
      msg.instance ? h("span", { class: "inst", title: msg.instance, text: String(msg.instance).slice(0, 12) }) : null,
      String(msg.text ?? ""),
    );
  } catch {
    row = h("div", { class: "log-line", text: line });
  }
  out.querySelector(".empty")?.remove();
  out.append(row);
  while (out.childElementCount > MAX_LOG_LINES) out.firstElementChild.remove();
  if (atBottom) out.scrollTop = out.scrollHeight;
}

function onFollowToggle() {
  if ($("logs-follow").checked) {
    loadLogs(true);
  } else {
    stopLogs();
    $("logs-status").textContent = "Stopped following.";
  }
}

// --- deploy / redeploy -----------------------------------------------------------------------

function kvText(map) {
  return Object.entries(map || {})
    .map(([k, v]) => `${k}=${v}`)
    .join("\n");
}

function parseKv(text, what) {
  const out = {};
  text.split("\n").forEach((rawLine, i) => {
    const line = rawLine.trim();
    if (!line || line.startsWith("#")) return;
    const eq = line.indexOf("=");
    if (eq <= 0) throw new Error(`${what}, line ${i + 1}: expected KEY=value`);
    out[line.slice(0, eq).trim()] = line.slice(eq + 1);
  });
  return out;
}

async function loadDeploySecrets(ns, checked) {
  const box = $("dep-secrets");
  box.replaceChildren(h("span", { class: "muted small", text: "Loading…" }));
  let names = [];
  try {
    const res = await api("GET", `/system/secrets?namespace=${enc(ns)}`);
    names = (await res.json()).map((s) => s.name).sort();
  } catch (err) {
    box.replaceChildren(h("span", { class: "muted small", text: `Could not list secrets: ${errorText(err)}` }));
    return;
  }
  for (const name of checked) if (!names.includes(name)) names.push(name); // keep ones that went missing visible
  if (!names.length) {
    box.replaceChildren(h("span", { class: "muted small", text: `No secrets in ${ns}. Create them with the Secrets button.` }));
    return;
  }
  box.replaceChildren(
    ...names.map((name) =>
      h("label", {}, h("input", { type: "checkbox", value: name, checked: checked.includes(name) }), name),
    ),
  );
}

function openDeploy(existing) {
  state.editing = existing || null;
  const form = $("deploy-form");
  form.reset();
  for (const el of form.querySelectorAll(".touched")) el.classList.remove("touched");
  $("deploy-error").hidden = true;
  $("deploy-title").textContent = existing ? `Edit and redeploy ${existing.name}` : "Deploy a function";
  $("deploy-submit").textContent = existing ? "Redeploy" : "Deploy";
  const fn = existing || {};
  $("dep-service").value = fn.name || "";
  $("dep-service").readOnly = Boolean(existing);
  $("dep-namespace").value = fn.namespace || state.ns;
  $("dep-namespace").disabled = Boolean(existing);
  $("dep-image").value = fn.image || "";
  $("dep-envprocess").value = fn.envProcess || "";
  $("dep-env").value = kvText(fn.envVars);
  $("dep-labels").value = kvText(fn.labels);
  $("dep-annotations").value = kvText(fn.annotations);
  $("dep-mem").value = fn.limits?.memory || "";
  $("dep-cpu").value = fn.limits?.cpu || "";
  $("dep-ro").checked = Boolean(fn.readOnlyRootFilesystem);
  loadDeploySecrets($("dep-namespace").value, fn.secrets || []);
  $("deploy-dialog").showModal();
  (existing ? $("dep-image") : $("dep-service")).focus();
}

function deploymentFromForm() {
  const service = $("dep-service").value.trim();
  const image = $("dep-image").value.trim();
  if (!NAME_RE.test(service) || service.length > 63) {
    $("dep-service").classList.add("touched");
    throw new Error("Name: lower-case letters, digits and '-', starting and ending with a letter or digit (at most 63).");
  }
  if (!image) {
    $("dep-image").classList.add("touched");
    throw new Error("Image is required.");
  }
  const body = {
    ...(state.editing ? { constraints: state.editing.constraints, requests: state.editing.requests } : {}),
    service,
    image,
    namespace: $("dep-namespace").value,
    envProcess: $("dep-envprocess").value.trim(),
    envVars: parseKv($("dep-env").value, "Environment variables"),
    labels: parseKv($("dep-labels").value, "Labels"),
    annotations: parseKv($("dep-annotations").value, "Annotations"),
    secrets: [...$("dep-secrets").querySelectorAll("input:checked")].map((el) => el.value),
    readOnlyRootFilesystem: $("dep-ro").checked,
  };
  const memory = $("dep-mem").value.trim();
  const cpu = $("dep-cpu").value.trim();
  if (memory || cpu) body.limits = { ...(memory && { memory }), ...(cpu && { cpu }) };
  return body;
}

async function submitDeploy(ev) {
  ev.preventDefault();
  const error = $("deploy-error");
  error.hidden = true;
  let body;
  try {
    body = deploymentFromForm();
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
    return;
  }
  const updating = Boolean(state.editing);
  const submit = $("deploy-submit");
  submit.disabled = true;
  submit.textContent = updating ? "Redeploying…" : "Deploying…";
  try {
    if (updating) await api("PUT", "/system/functions", { json: body });
    else await api("POST", "/system/functions", { json: body });
    $("deploy-dialog").close();
    toast(`${updating ? "Redeployed" : "Deployed"} ${body.service} in ${body.namespace}`);
    if (body.namespace !== state.ns) switchNamespace(body.namespace);
    await refreshList();
    selectFunction(body.service, true);
  } catch (err) {
    error.textContent = err instanceof ApiError ? `The gateway answered ${err.status}: ${err.message}` : errorText(err);
    error.hidden = false;
  } finally {
    submit.disabled = false;
    submit.textContent = updating ? "Redeploy" : "Deploy";
  }
}

// --- secrets ---------------------------------------------------------------------------------

async function openSecrets() {
  $("secrets-ns").textContent = state.ns;
  $("secret-error").hidden = true;
  $("secret-form").reset();
  $("secrets-dialog").showModal();
  await refreshSecrets();
}

async function refreshSecrets() {
  const ns = state.ns;
  try {
    const res = await api("GET", `/system/secrets?namespace=${enc(ns)}`);
    state.secrets = (await res.json()).map((s) => s.name).sort();
  } catch (err) {
    $("secret-error").textContent = `Could not list secrets: ${errorText(err)}`;
    $("secret-error").hidden = false;
    return;
  }
  $("secret-list").replaceChildren(
    ...state.secrets.map((name) =>
      h(
        "li",
        {},
        h("span", { class: "name", text: name }),
        h("button", {
          type: "button",
          class: "btn btn-danger",
          text: "Delete",
          "aria-label": `Delete secret ${name}`,
          onclick: () => deleteSecret(name),
        }),
      ),
    ),
  );
  $("secret-empty").hidden = state.secrets.length > 0;
}

async function createSecret(ev) {
  ev.preventDefault();
  const error = $("secret-error");
  error.hidden = true;
  const name = $("sec-name").value.trim();
  const value = $("sec-value").value;
  if (!name || !value) {
    error.textContent = "Both a name and a value are needed.";
    error.hidden = false;
    return;
  }
  $("secret-submit").disabled = true;
  try {
    await api("POST", "/system/secrets", { json: { name, namespace: state.ns, value } });
    $("secret-form").reset();
    toast(`Created secret ${name}`);
    await refreshSecrets();
  } catch (err) {
    error.textContent = errorText(err);
    error.hidden = false;
  } finally {
    $("secret-submit").disabled = false;
  }
}

async function deleteSecret(name) {
  const ns = state.ns;
  const ok = await confirmAction(
    `Delete secret ${name}?`,
    `Functions in ${ns} that use ${name} keep the copy they started with but cannot be redeployed with it.`,
    "Delete secret",
  );
  if (!ok) return;
  try {
    await api("DELETE", "/system/secrets", { json: { name, namespace: ns } });
    toast(`Deleted secret ${name}`);
  } catch (err) {
    toast(`Deleting secret ${name} failed: ${errorText(err)}`, "error");
  }
  await refreshSecrets();
}

// --- wiring ----------------------------------------------------------------------------------

const listPoller = new Poller(refreshList, LIST_POLL_MS);
const detailPoller = new Poller(refreshDetail, DETAIL_POLL_MS);

function applyHash() {
  const { ns, fn, tab } = readHash();
  if (ns && ns !== state.ns && state.namespaces.includes(ns)) switchNamespace(ns);
  state.tab = tab || "overview";
  if (fn !== state.selected) selectFunction(fn && NAME_RE.test(fn) ? fn : "", false);
  else if (fn) selectTab(state.tab, false);
}

function wire() {
  $("namespace").addEventListener("change", (ev) => switchNamespace(ev.target.value));
  $("search").addEventListener("input", renderList);
  $("fn-list").addEventListener("keydown", onListKeydown);
  document.querySelector(".tabs").addEventListener("keydown", onTabKeydown);
  for (const t of TABS) $(`tab-${t}`).addEventListener("click", () => selectTab(t, false));
  $("copy-url").addEventListener("click", copyUrl);
  $("scale-zero").addEventListener("click", () => scale(0));
  $("scale-one").addEventListener("click", () => scale(1));
  $("scale-up").addEventListener("click", () => scale("+1"));
  $("delete").addEventListener("click", deleteFunction);
  $("redeploy").addEventListener("click", () => state.detail && openDeploy(state.detail));
  $("invoke-form").addEventListener("submit", invoke);
  $("inv-body").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) $("invoke-form").requestSubmit();
  });
  $("inv-method").addEventListener("change", () => {
    $("inv-body").disabled = $("inv-method").value === "GET";
  });
  $("logs-refresh").addEventListener("click", () => loadLogs(false));
  $("logs-follow").addEventListener("change", onFollowToggle);
  $("logs-clear").addEventListener("click", clearLogs);
  $("open-deploy").addEventListener("click", () => openDeploy(null));
  $("deploy-form").addEventListener("submit", submitDeploy);
  $("dep-namespace").addEventListener("change", (ev) => loadDeploySecrets(ev.target.value, []));
  $("open-secrets").addEventListener("click", openSecrets);
  $("secret-form").addEventListener("submit", createSecret);
  for (const button of document.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
  window.addEventListener("hashchange", applyHash);
  window.addEventListener("popstate", applyHash);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      listPoller.kick();
      if (state.selected) detailPoller.kick();
    }
  });
  document.addEventListener("keydown", (ev) => {
    const typing = ev.target instanceof HTMLElement && ev.target.closest("input, textarea, select, dialog");
    if (ev.key === "/" && !typing) {
      $("search").focus();
      ev.preventDefault();
    }
  });
}

async function main() {
  wire();
  renderList();
  await loadNamespaces();
  loadInfo();
  const { fn, tab } = readHash();
  if (tab) state.tab = tab;
  renderList();
  listPoller.start();
  if (fn && NAME_RE.test(fn)) selectFunction(fn, false);
  else writeHash(false);
}

main();
