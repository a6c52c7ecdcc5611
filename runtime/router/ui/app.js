// The operator page of the cloud command router (runtime/router/ui.py says how it is served).
//
// Plain JavaScript, no dependencies, no build step. It speaks only the router's public API:
//   GET  /api/v1/ui              settings (refresh period, chart window), before anyone signs in
//   POST /api/v1/login           user name + password -> a session token (or the user pastes a token)
//   GET  /api/v1/me              who the token is, which edges it may command or watch
//   GET  /api/v1/edges           every edge: online, last seen, capabilities, latest telemetry, site state
//   GET  /api/v1/edges/{id}/telemetry   the charts' points (down-sampled by the router)
//   POST /api/v1/commands        send a command (the router checks it again)
//   GET  /api/v1/commands/{id}   a command someone else sent (its details)
//   GET  /api/v1/audit           recent commands and the history view (JSON, or CSV for the export)
//   WS   /ws/client?access_token=...   every state change, pushed (subscribe to every edge it may view)
// The websocket reconnects with backoff; each time it is up again the page reloads the edges and the
// recent commands, so it is right again after the router restarts. Nothing is rendered with innerHTML:
// every text from the router goes in as text.

const TOKEN_KEY = "qec.operator.token";
const FINAL = new Set(["EXECUTED", "REJECTED", "FAILED", "EXPIRED", "SUPERSEDED", "CANCELLED", "TIMED_OUT",
  "EXECUTED_LATE", "FAILED_LATE", "REJECTED_LATE", "REFUSED"]);
const BAD = new Set(["REJECTED", "FAILED", "EXPIRED", "SUPERSEDED", "CANCELLED", "TIMED_OUT", "FAILED_LATE",
  "REJECTED_LATE", "REFUSED"]);
const RANK = { QUEUED: 0, SENT: 1, DELIVERED: 2, ACCEPTED: 3, TIMED_OUT: 4 };
const STATUSES = ["QUEUED", "SENT", "DELIVERED", "ACCEPTED", "EXECUTED", "REJECTED", "FAILED", "TIMED_OUT",
  "EXPIRED", "SUPERSEDED", "CANCELLED", "EXECUTED_LATE", "FAILED_LATE", "REJECTED_LATE", "REFUSED",
  "CONNECTED", "DISCONNECTED", "SIGNED_IN"];
const PROBLEMS = "REFUSED,REJECTED,FAILED,TIMED_OUT,EXPIRED,SUPERSEDED,CANCELLED,FAILED_LATE,REJECTED_LATE";
const KINDS = ["submit", "state", "refused", "duplicate", "resend", "ack", "cancel", "edge", "login"];
const RANGES = [["15m", "Last 15 minutes"], ["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"],
  ["all", "All time"], ["custom", "Custom…"]];
const MAX_ROWS = 100;
const COLORS = ["#1f6fb2", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0f766e"];
const MAX_EXPIRY = 30 * 24 * 3600;

const S = {
  settings: { password_sign_in: false, refresh_s: 5, telemetry_window_s: 3600, telemetry_bucket_s: 30 },
  token: null, me: null, expiresAt: null, restoring: false,
  edges: new Map(), edgesLoaded: false, reachable: true,
  commands: new Map(), fetching: new Set(),
  ws: null, wsRetry: 0, wsTimer: null, conn: "offline",
  clockOffset: 0, refreshTimer: null, expiryTimer: null, view: null,
};

// ---- small helpers -----------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

const $ = (sel, root = document) => root.querySelector(sel);
const serverNow = () => Date.now() + S.clockOffset;
const pad = (n) => String(n).padStart(2, "0");

function parseTime(value) {   // an ISO 8601 text, or epoch milliseconds
  if (value === null || value === undefined || value === "") return null;
  const t = typeof value === "number" ? value : Date.parse(value);
  return Number.isFinite(t) ? t : null;
}

function formatTime(ms, withDate = false) {
  if (ms === null) return "—";
  const d = new Date(ms);
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const today = new Date(serverNow()).toDateString() === d.toDateString();
  return withDate || !today ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}` : time;
}

function timeEl(value, withDate = false) {
  const ms = parseTime(value);
  if (ms === null) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: new Date(ms).toISOString(), title: new Date(ms).toISOString() },
    formatTime(ms, withDate));
}

function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function agoEl(value) {
  const ms = parseTime(value);
  if (ms === null) return h("span", { class: "muted" }, "never");
  return h("time", { datetime: new Date(ms).toISOString(), title: formatTime(ms, true), dataset: { ago: ms } },
    agoText(ms));
}

function agoText(ms) {
  const s = (serverNow() - ms) / 1000;
  return s < 2 ? "just now" : `${formatDuration(s)} ago`;
}

function num(value, digits = 1) {
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
  if (Number.isInteger(value)) return String(value);
  return Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(digits);
}

function group(value) {   // 50000 -> "50 000" (thin spaces are hard to type: plain ones)
  if (typeof value !== "number") return String(value);
  const [int, frac] = String(value).split(".");
  const sign = int.startsWith("-") ? "−" : "";
  const digits = int.replace("-", "").replace(/\B(?=(\d{3})+(?!\d))/g, " ");
  return sign + digits + (frac ? `.${frac}` : "");
}

function announce(text) {
  const el = $("#announce");
  el.textContent = "";
  window.setTimeout(() => { el.textContent = text; }, 30);
}

function banner(text) {
  const el = $("#banner");
  el.hidden = !text;
  el.textContent = text || "";
}

// Replace a region's children, keeping the keyboard focus on the element with the same data-key.
const signatures = new WeakMap();
function patch(region, signature, build) {
  if (!region) return;
  if (signature !== undefined && signatures.get(region) === signature) return;
  signatures.set(region, signature);
  const active = document.activeElement;
  const key = active && region.contains(active) ? active.dataset.key : null;
  region.replaceChildren(...[build()].flat(Infinity).filter(Boolean));
  if (key) {
    const again = region.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

// ---- the router's API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
    this.body = body || {};
  }
}

async function api(path, { method = "GET", body, raw = false } = {}) {
  const headers = {};
  if (S.token) headers.Authorization = `Bearer ${S.token}`;
  else if (path !== "/api/v1/login" && path !== "/api/v1/ui") {
    // signed out while a refresh was under way: nothing goes to the router without a session
    throw new ApiError(401, { code: "signed_out", message: "signed out" });
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, { code: "unreachable", message: "the router is not answering" });
  }
  const date = Date.parse(response.headers.get("date") || "");
  if (Number.isFinite(date)) {   // the Date header has a 1 s resolution: only a real skew counts
    const offset = date - Date.now();
    S.clockOffset = Math.abs(offset) > 2000 ? offset : 0;
  }
  if (raw && response.ok) return response;
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { message: text }; }
  if (!response.ok) {
    const err = new ApiError(response.status, data);
    if (response.status === 401 && S.me && path !== "/api/v1/login") signOut(`Signed out: ${err.message}`);
    throw err;
  }
  return data;
}

// ---- session -----------------------------------------------------------------------------------------

function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part));
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

function mayControl(edgeId) {
  const c = S.me && S.me.can_control;
  return c === "*" || (Array.isArray(c) && c.includes(edgeId));
}

function viewOnlyEverywhere() {
  const c = S.me && S.me.can_control;
  return !(c === "*" || (Array.isArray(c) && c.length));
}

async function signIn(token) {
  S.token = token;
  let me;
  try {
    me = await api("/api/v1/me");
  } catch (err) {
    S.token = null;
    throw err;
  }
  S.me = me;
  S.expiresAt = tokenExpiry(token);
  sessionStorage.setItem(TOKEN_KEY, token);
  window.clearTimeout(S.expiryTimer);
  if (S.expiresAt) {
    const left = S.expiresAt - serverNow();
    S.expiryTimer = window.setTimeout(() => signOut("Your session has ended: sign in again."),
      Math.max(0, Math.min(left, 2 ** 31 - 1)));
  }
  $("#who").textContent = `${me.user}${viewOnlyEverywhere() ? " (view only)" : ""}`;
  $("#nav").hidden = false;
  $("#session").hidden = false;
  refreshAll(true);
  connectSocket();
  startRefresh();
  if (!location.hash || location.hash.startsWith("#/login")) location.hash = "#/sites";
  else route();
}

function signOut(message) {
  S.token = null;
  S.me = null;
  S.edges.clear();
  S.edgesLoaded = false;
  S.commands.clear();
  sessionStorage.removeItem(TOKEN_KEY);
  window.clearTimeout(S.expiryTimer);
  window.clearInterval(S.refreshTimer);
  window.clearTimeout(S.wsTimer);
  const ws = S.ws;
  S.ws = null;
  if (ws) ws.close(1000, "signed out");
  setConn("offline");
  $("#nav").hidden = true;
  $("#session").hidden = true;
  banner("");
  S.loginMessage = message || "";
  if (location.hash !== "#/login") location.hash = "#/login";
  else route();
}

// ---- live states over the websocket ------------------------------------------------------------------

function setConn(state) {
  S.conn = state;
  const el = $("#conn");
  el.className = `conn ${state}`;
  el.textContent = { live: "live", connecting: "connecting…", reconnecting: "reconnecting…",
    offline: "offline" }[state];
}

function connectSocket() {
  window.clearTimeout(S.wsTimer);
  if (!S.token) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/client?access_token=${encodeURIComponent(S.token)}`);
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  setConn(S.wsRetry ? "reconnecting" : "connecting");
  let refused = null;
  ws.onopen = () => {
    ws.send(JSON.stringify({ v: 1, type: "subscribe" }));   // text first: the router answers in JSON
  };
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") return;
    let frame;
    try { frame = JSON.parse(event.data); } catch { return; }
    if (S.conn !== "live" && !refused && frame.type !== "error") live();
    if (frame.type === "status") onStatus(frame);
    else if (frame.type === "error") {
      if (!frame.command_id && ["unauthorized", "forbidden"].includes(frame.code)) refused = frame;
      else onErrorFrame(frame);
    }
  };
  ws.onclose = () => {
    if (S.ws !== ws) return;
    S.ws = null;
    if (refused && refused.code === "unauthorized") { signOut(`Signed out: ${refused.message}`); return; }
    setConn("reconnecting");
    banner("The live connection to the router is down: reconnecting…");
    const delay = Math.min(10000, 500 * 2 ** S.wsRetry) * (0.5 + Math.random() / 2);
    S.wsRetry += 1;
    S.wsTimer = window.setTimeout(connectSocket, delay);
  };
  // the router answers the subscribe with nothing: the socket is live once it is open and not refused
  ws.addEventListener("open", () => window.setTimeout(() => { if (S.ws === ws && !refused) live(); }, 150));
}

function live() {
  if (S.conn === "live") return;
  const again = S.wsRetry > 0;
  S.wsRetry = 0;
  setConn("live");
  banner("");
  refreshAll(true);
  if (again) announce("Live connection to the router restored");
}

function onErrorFrame(frame) {
  if (!frame.command_id) return;
  const c = command(frame.command_id);
  addState(c, "REFUSED", new Date(serverNow()).toISOString(), `${frame.code}: ${frame.message}`);
  updateCommand(c);
}

// ---- commands ----------------------------------------------------------------------------------------

function command(id, edgeId) {
  let c = S.commands.get(id);
  if (!c) {
    c = { id, edge: edgeId || null, device: null, channel: null, value: null, unit: null, priority: "normal",
      type: null, user: null, submitted: null, state: null, stateAt: null, executedAt: null, error: null,
      history: [] };
    S.commands.set(id, c);
  }
  if (edgeId && !c.edge) c.edge = edgeId;
  return c;
}

function fill(c, payload) {
  if (!payload) return;
  const target = payload.target || {};
  c.edge = target.edge_id || c.edge;
  c.device = target.device_id || "site";
  c.channel = target.channel;
  c.value = payload.value;
  c.unit = payload.unit || null;
  c.priority = payload.priority || "normal";
  c.type = payload.command_type;
  c.duration = payload.duration_sec || null;
}

function addState(c, status, at, error, executedAt, source) {
  const ms = parseTime(at) ?? serverNow();
  const same = c.history.find((s) => s.status === status && Math.abs(s.at - ms) < 2000
    && (status !== "TIMED_OUT" || (s.error || "") === (error || "")));
  if (same) {
    if (error && !same.error) same.error = error;
  } else {
    c.history.push({ status, at: ms, error: error || null });
    c.history.sort((a, b) => a.at - b.at || (RANK[a.status] ?? 9) - (RANK[b.status] ?? 9));
  }
  if (source && !c.user) c.user = source;
  if (executedAt) c.executedAt = executedAt;
  if (status === "QUEUED" && (c.submitted === null || ms < c.submitted)) c.submitted = ms;
  const last = c.history[c.history.length - 1];
  c.state = last.status;
  c.stateAt = last.at;
  const reasons = c.history.filter((s) => s.error);
  c.error = BAD.has(c.state) || c.state.endsWith("_LATE") ? (reasons.length ? reasons[reasons.length - 1].error
    : c.error) : (last.error || null);
}

function onStatus(frame) {
  const c = command(frame.command_id, frame.edge_id);
  addState(c, frame.status, frame.at, frame.error, frame.executed_at, frame.source);
  if (!c.channel) fetchDetails(c);
  updateCommand(c);
  if (FINAL.has(frame.status)) announce(`Command ${c.id} ${frame.status}${frame.error ? `: ${frame.error}` : ""}`);
}

async function fetchDetails(c) {
  if (S.fetching.has(c.id)) return;
  S.fetching.add(c.id);
  try {
    const rec = await api(`/api/v1/commands/${encodeURIComponent(c.id)}`);
    fill(c, rec.command);
    c.user = c.user || rec.user;
    if (rec.submitted_at && c.submitted === null) c.submitted = parseTime(rec.submitted_at);
    for (const row of rec.history || []) ingest(row);
    updateCommand(c);
  } catch {
    // not known to the router (refused before it was stored) or not visible: the row shows what there is
  } finally {
    S.fetching.delete(c.id);
  }
}

function ingest(row) {
  if (!row.command_id) return;
  const c = command(row.command_id, row.edge_id);
  if (row.kind === "submit") {
    fill(c, row.payload);
    c.user = row.user_id || c.user;
    addState(c, "QUEUED", row.at, null);
  } else if (row.kind === "state") {
    addState(c, row.status, row.at, row.detail);
  } else if (row.kind === "refused") {
    c.user = c.user || row.user_id;
    addState(c, "REFUSED", row.at, row.detail);
  }
}

async function loadRecent() {
  const data = await api("/api/v1/audit?since=1h&order=desc&limit=2000");
  for (const row of data.rows.reverse()) ingest(row);
}

function describe(c) {
  if (!c.channel) return h("span", { class: "muted" }, "…");
  const target = `${c.device}.${c.channel}`;
  let value = "";
  if (c.type === "system") value = "";
  else if (typeof c.value === "boolean") value = c.value ? " = on" : " = off";
  else if (c.value !== null && c.value !== undefined) value = ` = ${group(c.value)}${c.unit ? ` ${c.unit}` : ""}`;
  return [h("span", { class: "target" }, target + value),
    c.duration ? h("span", { class: "muted" }, ` for ${formatDuration(c.duration)}`) : null,
    c.priority === "emergency" ? h("span", { class: "tag emergency" }, "emergency") : null];
}

function stateBadge(state) {
  const cls = state === "EXECUTED" ? "ok" : BAD.has(state) || (state || "").endsWith("_LATE") ? "bad" : "busy";
  return h("span", { class: `badge state ${cls}` }, state || "?");
}

function commandRow(c, showEdge) {
  const timeline = c.history.map((s) => h("li", {}, h("span", { class: "tl-state" }, s.status), " ",
    timeEl(s.at), s.error ? h("span", { class: "tl-error" }, ` — ${s.error}`) : null));
  return [
    h("td", { class: "cmd" }, h("code", { title: c.id }, c.id), h("br"), describe(c)),
    showEdge ? h("td", { class: "edge" }, c.edge ? h("a", { href: `#/site/${encodeURIComponent(c.edge)}`,
      dataset: { key: `cmd-edge-${c.id}` } }, c.edge) : "—") : null,
    h("td", { class: "user" }, c.user || "—"),
    h("td", { class: "submitted" }, c.submitted !== null ? timeEl(c.submitted) : "—"),
    h("td", { class: "state" }, h("details", {}, h("summary", { dataset: { key: `cmd-${c.id}` } },
      stateBadge(c.state), " ", h("span", { class: "state-at" }, timeEl(c.stateAt))),
      h("ol", { class: "timeline", "aria-label": `States of ${c.id}` }, timeline))),
    h("td", { class: "executed-at" }, c.executedAt ? timeEl(c.executedAt) : h("span", { class: "muted" }, "—")),
    h("td", { class: "reason" }, c.error ? c.error : h("span", { class: "muted" }, "—")),
  ];
}

function commandsTable(edgeId) {
  const showEdge = !edgeId;
  const wrap = h("div", { class: "table-wrap" });
  const body = h("tbody", { id: "commands-body" });
  const table = h("table", { class: "commands", id: "commands", dataset: { edge: edgeId || "" } },
    h("caption", { class: "visually-hidden" }, edgeId ? `Commands sent to ${edgeId}` : "Recent commands"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Command"), showEdge ? h("th", { scope: "col" }, "Site")
      : null, h("th", { scope: "col" }, "Sent by"), h("th", { scope: "col" }, "Submitted"),
    h("th", { scope: "col" }, "State"), h("th", { scope: "col" }, "Executed"), h("th", { scope: "col" }, "Reason"))),
    body);
  wrap.append(table, h("p", { class: "muted empty", id: "commands-empty" }, "No commands in the last hour."));
  return wrap;
}

function renderCommands() {
  const table = $("#commands");
  if (!table) return;
  const edgeId = table.dataset.edge || null;
  const body = $("#commands-body");
  const list = [...S.commands.values()].filter((c) => !edgeId || c.edge === edgeId)
    .sort((a, b) => (b.submitted ?? b.stateAt ?? 0) - (a.submitted ?? a.stateAt ?? 0)).slice(0, MAX_ROWS);
  $("#commands-empty").hidden = list.length > 0;
  const rows = new Map([...body.children].map((tr) => [tr.dataset.commandId, tr]));
  let previous = null;
  for (const c of list) {
    let tr = rows.get(c.id);
    rows.delete(c.id);
    if (!tr) tr = h("tr", { dataset: { commandId: c.id } });
    updateRow(tr, c, !edgeId);
    if (previous ? previous.nextSibling !== tr : body.firstChild !== tr) {
      if (previous) previous.after(tr); else body.prepend(tr);
    }
    previous = tr;
  }
  for (const tr of rows.values()) tr.remove();
}

function updateRow(tr, c, showEdge) {
  const signature = JSON.stringify([c.state, c.history.length, c.error, c.executedAt, c.channel, c.user,
    c.submitted]);
  if (tr.dataset.sig === signature) return;
  const open = $("details", tr)?.open;
  tr.dataset.sig = signature;
  tr.dataset.state = c.state || "";
  patch(tr, undefined, () => commandRow(c, showEdge));
  if (open) $("details", tr).open = true;
}

function updateCommand(c) {
  const table = $("#commands");
  if (!table) return;
  if (table.dataset.edge && c.edge !== table.dataset.edge) return;
  renderCommands();
}

// ---- edges -------------------------------------------------------------------------------------------

async function loadEdges() {
  const data = await api("/api/v1/edges");
  S.edges = new Map(data.edges.map((e) => [e.edge_id, e]));
  S.edgesLoaded = true;
}

async function refreshAll(withCommands = false) {
  if (!S.token) return;
  try {
    await loadEdges();
    if (withCommands) await loadRecent();
    if (!S.reachable) { S.reachable = true; if (S.conn === "live") banner(""); }
  } catch (err) {
    if (err.status === 401) return;
    S.reachable = false;
    banner(`The router is not answering (${err.message}): retrying…`);
    return;
  }
  renderData();
}

function startRefresh() {
  window.clearInterval(S.refreshTimer);
  S.refreshTimer = window.setInterval(() => {
    refreshAll(false);
    if (S.view === "site") loadCharts();
  }, S.settings.refresh_s * 1000);
}

function devicesOf(edge) {
  const caps = (edge.capabilities && edge.capabilities.devices) || [];
  const states = (edge.site_state && edge.site_state.devices) || {};
  const telemetry = edge.telemetry || {};
  const ids = new Set([...caps.filter((d) => d.device_id !== "site").map((d) => d.device_id),
    ...Object.keys(states), ...Object.keys(telemetry)]);
  return [...ids].sort().map((id) => {
    const cap = caps.find((d) => d.device_id === id);
    const values = (telemetry[id] && telemetry[id].values) || {};
    return { id, kind: cap ? cap.kind : "?", state: states[id] || null, power: values.ActivePower,
      soc: values.Soc, at: telemetry[id] && telemetry[id].at, channels: cap ? cap.channels : [] };
  });
}

function overridesOf(edge) {
  const st = edge.site_state || {};
  const arrived = parseTime(edge.site_state_at) ?? serverNow();
  return (st.overrides || []).map((o) => ({ ...o, ends: arrived + (o.seconds_left || 0) * 1000 }));
}

function controllersOn(edge) {
  const st = edge.site_state || {};
  return Object.entries(st.controllers || {}).filter(([, on]) => on).map(([name]) => name).sort();
}

function controllersOff(edge) {
  const st = edge.site_state || {};
  return Object.entries(st.controllers || {}).filter(([, on]) => !on).map(([name]) => name).sort();
}

function onlineBadge(edge) {
  return h("span", { class: `badge ${edge.online ? "online" : "offline"}` }, edge.online ? "online" : "offline");
}

function kw(watts) {
  return typeof watts === "number" ? `${num(watts / 1000, 1)} kW` : null;
}

function deviceLine(d) {
  const bits = [kw(d.power), typeof d.soc === "number" ? `SoC ${num(d.soc, 1)} %` : null].filter(Boolean);
  return h("li", { class: "device" }, h("span", { class: "device-id" }, d.id), " ",
    h("span", { class: "muted" }, `(${d.kind})`), " ",
    d.state ? h("span", { class: `badge dev ${/FAULT|UNAVAILABLE/.test(d.state) ? "bad" : "plain"}` }, d.state)
      : null, bits.length ? h("span", { class: "values" }, ` ${bits.join(" · ")}`) : null);
}

function overrideLine(o) {
  return h("li", { class: "override" }, h("span", { class: "device-id" }, `${o.device_id}.${o.channel}`),
    ` = ${group(o.value)}${o.unit ? ` ${o.unit}` : ""} · `, h("span", { class: "left", dataset: { ends: o.ends } },
      formatDuration((o.ends - serverNow()) / 1000)), " left");
}

function siteCard(edge) {
  const devices = devicesOf(edge);
  const overrides = overridesOf(edge);
  const on = controllersOn(edge);
  return h("article", { class: "card site-card", dataset: { edge: edge.edge_id } },
    h("h2", {}, h("a", { href: `#/site/${encodeURIComponent(edge.edge_id)}`, dataset: { key: `site-${edge.edge_id}` } },
      edge.edge_id), " ", onlineBadge(edge)),
    h("dl", {},
      h("dt", {}, "Last seen"), h("dd", { class: "last-seen" }, agoEl(edge.last_seen)),
      h("dt", {}, "Devices"), h("dd", {}, devices.length ? h("ul", { class: "plain" }, devices.map(deviceLine))
        : h("span", { class: "muted" }, "none published")),
      h("dt", {}, "Overrides"), h("dd", { class: "overrides" }, overrides.length
        ? h("ul", { class: "plain" }, overrides.map(overrideLine)) : h("span", { class: "muted" }, "none active")),
      h("dt", {}, "Controllers on"), h("dd", { class: "controllers" }, on.length ? on.join(", ")
        : h("span", { class: "muted" }, edge.site_state ? "none" : "not reported yet"))));
}

function edgeSignature(edge) {
  const { last_seen: _seen, ...rest } = edge;   // "last seen" ticks by itself
  return JSON.stringify(rest);
}

// ---- views -------------------------------------------------------------------------------------------

function route() {
  const hash = location.hash || "#/sites";
  const [path, query] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean);
  if (S.restoring && !S.me) return;   // a saved session is being checked: no sign-in form meanwhile
  if (!S.token || !S.me) {
    S.view = "login";
    return renderLogin();
  }
  document.querySelectorAll("#nav a").forEach((a) => a.removeAttribute("aria-current"));
  if (parts[0] === "site" && parts[1]) {
    S.view = "site";
    $("#nav-sites").setAttribute("aria-current", "page");
    return renderSite(decodeURIComponent(parts[1]));
  }
  if (parts[0] === "history") {
    S.view = "history";
    $("#nav-history").setAttribute("aria-current", "page");
    return renderHistory(new URLSearchParams(query || ""));
  }
  if (parts[0] === "login") { location.hash = "#/sites"; return undefined; }
  S.view = "sites";
  $("#nav-sites").setAttribute("aria-current", "page");
  return renderSites();
}

function setMain(title, ...children) {
  document.title = `${title} · Operator`;
  const main = $("#main");
  main.replaceChildren(...children.flat(Infinity).filter(Boolean));
  return main;
}

function focusMain() {
  const heading = $("#main h1");
  if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus({ preventScroll: false }); }
}

function renderData() {
  if (S.view === "sites") renderSitesData();
  else if (S.view === "site") renderSiteData();
  else if (S.view === "history") fillHistorySites();
}

// -- sign in

function renderLogin() {
  const error = h("p", { id: "login-error", class: "error", role: "alert" }, S.loginMessage || "");
  S.loginMessage = "";
  const password = S.settings.password_sign_in ? h("form", { id: "login-form", class: "stack", novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      const user = $("#login-user").value.trim();
      const pw = $("#login-password").value;
      if (!user || !pw) { error.textContent = `Enter your ${!user ? "user name" : "password"}.`; return; }
      const button = $("#login-submit");
      button.disabled = true;
      try {
        const answer = await api("/api/v1/login", { method: "POST", body: { username: user, password: pw } });
        await signIn(answer.token);
      } catch (err) {
        error.textContent = err.status === 429 ? `Too many attempts: ${err.message}`
          : `Sign-in refused: ${err.message}`;
        $("#login-password").select();
      } finally {
        button.disabled = false;
      }
    } },
  h("h2", {}, "With your user name"),
  h("label", { for: "login-user" }, "User name"),
  h("input", { id: "login-user", name: "username", autocomplete: "username", required: true, autocapitalize: "none",
    spellcheck: "false" }),
  h("label", { for: "login-password" }, "Password"),
  h("input", { id: "login-password", name: "password", type: "password", autocomplete: "current-password",
    required: true }),
  h("button", { type: "submit", id: "login-submit" }, "Sign in")) : null;
  const token = h("form", { id: "token-form", class: "stack", novalidate: true, onsubmit: async (event) => {
    event.preventDefault();
    const value = $("#login-token").value.trim();
    if (!value) { error.textContent = "Paste a token first."; return; }
    try {
      await signIn(value);
    } catch (err) {
      error.textContent = `The router refused the token: ${err.message}`;
    }
  } },
  h("h2", {}, password ? "Or with a token" : "With a token"),
  h("label", { for: "login-token" }, "Token (a JWT from your identity provider or coordinator token user)"),
  h("textarea", { id: "login-token", rows: 3, spellcheck: "false", autocomplete: "off" }),
  h("button", { type: "submit", id: "token-submit" }, "Sign in with the token"));
  setMain("Sign in", h("section", { class: "login card", "aria-labelledby": "login-h" },
    h("h1", { id: "login-h" }, "Sign in"), error, password, token));
  const first = $("#login-user") || $("#login-token");
  first.focus();
}

// -- every site

function renderSites() {
  setMain("Sites",
    h("h1", {}, "Sites"),
    h("p", { id: "sites-summary", class: "muted" }, "Loading the sites…"),
    h("div", { id: "site-cards", class: "cards" }),
    h("section", { "aria-labelledby": "recent-h" }, h("h2", { id: "recent-h" }, "Recent commands"),
      h("p", { class: "muted" }, "Every state change is pushed as it happens; the last hour, newest first."),
      commandsTable(null)));
  focusMain();
  renderSitesData();
  renderCommands();
}

function renderSitesData() {
  if (!S.edgesLoaded) return;
  const edges = [...S.edges.values()];
  const online = edges.filter((e) => e.online).length;
  $("#sites-summary").textContent = edges.length
    ? `${edges.length} site${edges.length === 1 ? "" : "s"}, ${online} online.` : "No site has connected yet.";
  patch($("#site-cards"), JSON.stringify(edges.map(edgeSignature)), () => edges.map(siteCard));
}

// -- one site

function renderSite(edgeId) {
  S.siteId = edgeId;
  S.chartData = null;
  setMain(edgeId,
    h("h1", {}, h("span", {}, edgeId), " ", h("span", { id: "site-online" })),
    h("p", { id: "site-meta", class: "muted" }, "Loading…"),
    h("div", { class: "columns" },
      h("section", { class: "card", "aria-labelledby": "form-h", id: "command-card" },
        h("h2", { id: "form-h" }, "Send a command"), h("div", { id: "command-form-slot" },
          h("p", { class: "muted" }, "Waiting for the site's capabilities…"))),
      h("section", { class: "card", "aria-labelledby": "state-h" }, h("h2", { id: "state-h" }, "Site state"),
        h("div", { id: "site-state" }))),
    h("section", { class: "card", "aria-labelledby": "charts-h" },
      h("h2", { id: "charts-h" }, "Last hour"),
      h("div", { id: "charts", class: "charts" }, h("p", { class: "muted" }, "Loading the charts…"))),
    h("section", { "aria-labelledby": "devices-h" }, h("h2", { id: "devices-h" }, "Devices and channels"),
      h("div", { id: "devices" })),
    h("section", { "aria-labelledby": "site-cmds-h" }, h("h2", { id: "site-cmds-h" }, `Commands to ${edgeId}`),
      commandsTable(edgeId)));
  focusMain();
  renderSiteData();
  renderCommands();
  loadCharts();
}

function renderSiteData() {
  if (!S.edgesLoaded) return;
  const edge = S.edges.get(S.siteId);
  if (!edge) {
    $("#site-meta").textContent = `No site ${S.siteId} is known to this router, or your token may not view it.`;
    return;
  }
  patch($("#site-online"), String(edge.online), () => onlineBadge(edge));
  patch($("#site-meta"), JSON.stringify([edge.last_seen ? 1 : 0, edge.connected_at, edge.software, edge.instance]),
    () => ["Last seen ", agoEl(edge.last_seen), edge.connected_at ? [" · connected at ", timeEl(edge.connected_at,
      true)] : null, edge.software ? ` · ${edge.software}` : null]);
  const overrides = overridesOf(edge);
  patch($("#site-state"), JSON.stringify([edge.site_state, edge.site_state_at]), () => h("dl", {},
    h("dt", {}, "Controllers on"), h("dd", { class: "controllers" }, controllersOn(edge).join(", ") || "none"),
    h("dt", {}, "Controllers off"), h("dd", {}, controllersOff(edge).join(", ") || "none"),
    h("dt", {}, "Active overrides"), h("dd", { class: "overrides" }, overrides.length
      ? h("ul", { class: "plain" }, overrides.map(overrideLine)) : "none")));
  patch($("#devices"), JSON.stringify([edge.capabilities, edge.site_state && edge.site_state.devices,
    edge.telemetry]), () => devicesOf(edge).map(deviceBlock));
  const caps = JSON.stringify(edge.capabilities || null);
  const slot = $("#command-form-slot");
  if (slot.dataset.caps !== caps && !slot.contains(document.activeElement)) {
    slot.dataset.caps = caps;
    slot.replaceChildren(commandForm(edge));
  }
}

function range(channel) {
  if (channel.min === undefined && channel.max === undefined) return "—";
  const lo = channel.min ?? "−∞";
  const hi = channel.max ?? "∞";
  return `${group(lo)} … ${group(hi)}${channel.unit ? ` ${channel.unit}` : ""}`;
}

function deviceBlock(d) {
  const bits = [kw(d.power), typeof d.soc === "number" ? `SoC ${num(d.soc, 1)} %` : null].filter(Boolean);
  return h("article", { class: "card device-card", dataset: { device: d.id } },
    h("h3", {}, d.id, " ", h("span", { class: "muted" }, `(${d.kind})`), " ",
      d.state ? h("span", { class: "badge dev plain" }, d.state) : null),
    h("p", { class: "values" }, bits.length ? bits.join(" · ") : "No telemetry yet.",
      d.at ? [" · measured ", timeEl(d.at)] : null),
    d.channels.length ? h("div", { class: "table-wrap" }, h("table", { class: "channels" },
      h("caption", { class: "visually-hidden" }, `Channels of ${d.id}`),
      h("thead", {}, h("tr", {}, ["Channel", "Access", "Command type", "Range", "Meaning"].map((t) =>
        h("th", { scope: "col" }, t)))),
      h("tbody", {}, d.channels.map((c) => h("tr", {}, h("td", {}, h("code", {}, c.name)),
        h("td", {}, c.writable === false ? "read only" : "writable"),
        h("td", {}, c.writable === false ? "—" : c.command_type || "setpoint"),
        h("td", {}, range(c)), h("td", {}, c.description || "")))))) : null);
}

// -- the charts

async function loadCharts() {
  const edgeId = S.siteId;
  let data;
  try {
    data = await api(`/api/v1/edges/${encodeURIComponent(edgeId)}/telemetry`);
  } catch (err) {
    if (S.view === "site" && S.siteId === edgeId && err.status !== 0) {
      patch($("#charts"), `error ${err.message}`, () => h("p", { class: "error" }, `No charts: ${err.message}`));
    }
    return;
  }
  if (S.view !== "site" || S.siteId !== edgeId) return;
  S.chartData = data;
  const devices = Object.entries(data.devices);
  const power = devices.filter(([, v]) => v.ActivePower && v.ActivePower.length)
    .map(([id, v]) => ({ id, points: v.ActivePower.map(([t, mean, lo, hi]) => [t, mean / 1000, lo / 1000, hi / 1000]) }));
  const soc = devices.filter(([, v]) => v.Soc && v.Soc.length).map(([id, v]) => ({ id, points: v.Soc }));
  patch($("#charts"), JSON.stringify(data.devices), () => [
    chart("chart-power", "Power", "kW", "> 0 discharging (battery), charging power (charger)", power, data, null),
    chart("chart-soc", "State of charge", "%", "batteries", soc, data, [0, 100])]);
}

function ticks(lo, hi) {   // three to six round values between lo and hi
  const raw = (hi - lo) / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Math.abs(v) < 1e-9 ? 0 : v);
  return out;
}

function chart(id, title, unit, note, series, data, fixed) {
  const W = 560; const H = 170; const L = 46; const R = 8; const T = 8; const B = 22;
  const now = data.now; const start = now - data.window_s;
  const figure = h("figure", { class: "chart", id });
  const caption = h("figcaption", {}, h("strong", {}, `${title} (${unit})`), " ", h("span", { class: "muted" },
    note));
  if (!series.length) {
    figure.append(caption, h("p", { class: "muted empty-chart" }, "No telemetry in the last hour."));
    return figure;
  }
  let lo = fixed ? fixed[0] : Infinity; let hi = fixed ? fixed[1] : -Infinity;
  if (!fixed) {
    for (const s of series) for (const p of s.points) { lo = Math.min(lo, p[2], 0); hi = Math.max(hi, p[3], 0); }
    if (hi - lo < 1e-9) { hi += 1; lo -= 1; }
    const padY = (hi - lo) * 0.1; hi += padY; lo = lo < 0 ? lo - padY : lo;
  }
  const x = (t) => L + ((t - start) / (now - start)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const grid = [];
  for (const v of ticks(lo, hi)) {
    grid.push(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }),
      svg("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", class: "axis" }, num(v, 1)));
  }
  if (!fixed && lo < 0 && hi > 0) grid.push(svg("line", { x1: L, x2: W - R, y1: y(0), y2: y(0), class: "zero" }));
  const minutes = Math.round(data.window_s / 60);
  grid.push(svg("text", { x: L, y: H - 6, class: "axis" }, `−${minutes} min`),
    svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "axis" }, `−${minutes / 2} min`),
    svg("text", { x: W - R, y: H - 6, "text-anchor": "end", class: "axis" }, "now"));
  const marks = []; const legend = []; const summary = [];
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const segments = [[]];
    let last = null;
    for (const p of s.points) {
      if (last !== null && p[0] - last > data.bucket_s * 2.5) segments.push([]);
      segments[segments.length - 1].push(p);
      last = p[0];
    }
    for (const seg of segments) {
      if (seg.length === 1) {
        marks.push(svg("circle", { cx: x(seg[0][0]), cy: y(seg[0][1]), r: 2.5, fill: color }));
        continue;
      }
      const band = seg.map((p) => `${x(p[0]).toFixed(1)},${y(p[3]).toFixed(1)}`)
        .concat(seg.slice().reverse().map((p) => `${x(p[0]).toFixed(1)},${y(p[2]).toFixed(1)}`)).join(" ");
      marks.push(svg("polygon", { points: band, fill: color, "fill-opacity": 0.15, stroke: "none" }),
        svg("polyline", { points: seg.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "),
          fill: "none", stroke: color, "stroke-width": 2 }));
    }
    const latest = s.points[s.points.length - 1][1];
    const means = s.points.map((p) => p[1]);
    legend.push(h("li", {}, svg("svg", { class: "swatch", width: 12, height: 12, "aria-hidden": "true" },
      svg("rect", { width: 12, height: 12, rx: 2, fill: color })), ` ${s.id}: ${num(latest, 1)} ${unit}`));
    summary.push(`${s.id} latest ${num(latest, 1)} ${unit}, between ${num(Math.min(...means), 1)} and `
      + `${num(Math.max(...means), 1)}`);
  });
  const label = `${title} in ${unit} over the last ${minutes} minutes: ${summary.join("; ")}.`;
  figure.append(caption, svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label,
    preserveAspectRatio: "none", class: "plot" }, svg("title", {}, label), grid, marks),
  h("ul", { class: "legend plain" }, legend));
  return figure;
}

// -- the command form

function writableDevices(edge) {
  const caps = (edge.capabilities && edge.capabilities.devices) || [];
  return caps.filter((d) => (d.channels || []).some((c) => c.writable !== false));
}

function isSwitch(channel) {
  return ["mode_change", "scheduler_control"].includes(channel.command_type);
}

function isBinary(channel) {
  return !channel.unit && channel.min === 0 && channel.max === 1 && (channel.command_type || "setpoint") === "setpoint";
}

const POWER = { W: 1, kW: 1000, w: 1, kw: 1000 };

function commandForm(edge) {
  const edgeId = edge.edge_id;
  const allowed = mayControl(edgeId);
  const devices = writableDevices(edge);
  if (!devices.length) return h("p", { class: "muted" }, "This site has published no writable channel yet.");
  const errors = h("div", { id: "cmd-errors", class: "error", role: "alert" });
  const result = h("p", { id: "cmd-result", role: "status" });
  const deviceSelect = h("select", { id: "cmd-device", name: "device" },
    devices.map((d) => h("option", { value: d.device_id }, `${d.device_id} (${d.kind})`)));
  const channelSelect = h("select", { id: "cmd-channel", name: "channel", "aria-describedby": "cmd-channel-help" });
  const channelHelp = h("p", { id: "cmd-channel-help", class: "help" });
  const valueSlot = h("div", { class: "field", id: "cmd-value-field" });
  const durationField = h("div", { class: "field", id: "cmd-duration-field", hidden: true },
    h("label", { for: "cmd-duration" }, "Override duration (s)"),
    h("input", { id: "cmd-duration", name: "duration", type: "number", min: 1, step: "any", inputmode: "decimal",
      value: 600, "aria-describedby": "cmd-duration-help" }),
    h("p", { id: "cmd-duration-help", class: "help" }, "The override reverts by itself after this long."));
  const form = h("form", { id: "command-form", novalidate: true, dataset: { edge: edgeId } },
    h("fieldset", { disabled: !allowed, id: "cmd-fieldset" },
      h("legend", { class: "visually-hidden" }, `Command for ${edgeId}`),
      allowed ? null : h("p", { class: "note", id: "view-only-note" },
        `View only: your sign-in may watch ${edgeId} but not command it (no can_control for it). The router `
        + "refuses commands from you as well."),
      h("div", { class: "grid" },
        h("div", { class: "field" }, h("label", { for: "cmd-device" }, "Device"), deviceSelect),
        h("div", { class: "field" }, h("label", { for: "cmd-channel" }, "Channel"), channelSelect, channelHelp),
        valueSlot,
        h("div", { class: "field" }, h("label", { for: "cmd-priority" }, "Priority"),
          h("select", { id: "cmd-priority", name: "priority" }, h("option", { value: "normal" }, "normal"),
            h("option", { value: "emergency" }, "emergency (asks to confirm)"))),
        h("div", { class: "field" }, h("label", { for: "cmd-expiry" }, "Expires after (s)"),
          h("input", { id: "cmd-expiry", name: "expiry", type: "number", min: 1, max: MAX_EXPIRY, step: "any",
            inputmode: "decimal", value: 300, "aria-describedby": "cmd-expiry-help" }),
          h("p", { id: "cmd-expiry-help", class: "help" }, "Not executed after this, even if the site was offline.")),
        durationField),
      errors,
      h("div", { class: "buttons" }, h("button", { type: "submit", id: "cmd-send" }, "Send command"))),
    result);
  const channelsOf = () => {
    const d = devices.find((x) => x.device_id === deviceSelect.value) || devices[0];
    return d.channels.filter((c) => c.writable !== false);
  };
  const current = () => channelsOf().find((c) => c.name === channelSelect.value) || channelsOf()[0];
  const fillChannels = () => {
    channelSelect.replaceChildren(...channelsOf().map((c) => h("option", { value: c.name },
      `${c.name}${c.unit ? ` (${c.unit})` : ""}`)));
    fillValue();
  };
  const fillValue = () => {
    const c = current();
    channelHelp.textContent = [c.description, `command type ${c.command_type || "setpoint"}`].filter(Boolean)
      .join(" · ");
    durationField.hidden = c.command_type !== "config_override";
    let input;
    if (c.command_type === "system") {
      input = [h("span", { class: "label" }, "Value"), h("p", { class: "help", id: "cmd-value" }, "No value: the "
        + "site carries the system command out.")];
    } else if (isSwitch(c)) {
      input = [h("label", { for: "cmd-value" }, "Switch"), h("select", { id: "cmd-value", name: "value" },
        h("option", { value: "true" }, "on"), h("option", { value: "false" }, "off"))];
    } else if (isBinary(c)) {
      input = [h("label", { for: "cmd-value" }, "Value"), h("select", { id: "cmd-value", name: "value" },
        h("option", { value: "1" }, "1"), h("option", { value: "0" }, "0"))];
    } else {
      const power = c.unit in POWER;
      const units = power ? h("select", { id: "cmd-unit", name: "unit", "aria-label": "Unit" },
        h("option", { value: "kW" }, "kW"), h("option", { value: "W" }, "W")) : h("span", { class: "unit",
        id: "cmd-unit-fixed" }, c.unit || "");
      input = [h("label", { for: "cmd-value" }, "Value"),
        h("div", { class: "with-unit" }, h("input", { id: "cmd-value", name: "value", type: "text",
          inputmode: "decimal", autocomplete: "off", "aria-describedby": "cmd-value-help" }), units),
        h("p", { id: "cmd-value-help", class: "help" }, `Range ${range(c)}`)];
      if (power) units.addEventListener("change", () => { $("#cmd-value-help").textContent = `Range ${range(c)}`; });
    }
    valueSlot.replaceChildren(...input.flat());
    errors.replaceChildren();
  };
  deviceSelect.addEventListener("change", fillChannels);
  channelSelect.addEventListener("change", fillValue);
  fillChannels();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitCommand(form, edgeId, current(), deviceSelect.value, errors, result);
  });
  return form;
}

function fieldError(problems, id, field, message) {
  problems.push({ id, text: `${field}: ${message}` });
}

function readCommand(channel, deviceId, edgeId) {
  const problems = [];
  const where = `${deviceId}.${channel.name}`;
  const type = channel.command_type || "setpoint";
  const body = { command_id: newId(), command_type: type, target: { edge_id: edgeId, device_id: deviceId,
    channel: channel.name } };
  if (isSwitch(channel)) body.value = $("#cmd-value").value === "true";
  else if (isBinary(channel)) body.value = Number($("#cmd-value").value);
  else if (type !== "system") {
    const raw = $("#cmd-value").value.trim().replace(",", ".");
    const unit = $("#cmd-unit") ? $("#cmd-unit").value : channel.unit;
    const value = Number(raw);
    if (raw === "" || !Number.isFinite(value)) {
      fieldError(problems, "cmd-value", "Value", raw === "" ? `enter a number (${unit || "no unit"})`
        : `${JSON.stringify(raw)} is not a number`);
    } else {
      const factor = POWER[unit] && POWER[channel.unit] ? POWER[unit] / POWER[channel.unit] : 1;
      const inChannelUnit = value * factor;
      const eps = 1e-9 * Math.max(1, Math.abs(inChannelUnit));
      if ((channel.min !== undefined && channel.min !== null && inChannelUnit < channel.min - eps)
        || (channel.max !== undefined && channel.max !== null && inChannelUnit > channel.max + eps)) {
        fieldError(problems, "cmd-value", "Value", `${group(value)} ${unit || ""} is outside ${range(channel)} `
          + `(${where})`);
      }
      body.value = value;
      if (unit) body.unit = unit;
    }
  }
  const expiry = Number($("#cmd-expiry").value);
  if (!Number.isFinite(expiry) || expiry <= 0 || expiry > MAX_EXPIRY) {
    fieldError(problems, "cmd-expiry", "Expires after", `must be more than 0 and at most ${group(MAX_EXPIRY)} s, got `
      + `${JSON.stringify($("#cmd-expiry").value)}`);
  } else body.expiry_sec = expiry;
  if (type === "config_override") {
    const duration = Number($("#cmd-duration").value);
    if (!Number.isFinite(duration) || duration <= 0 || duration > MAX_EXPIRY) {
      fieldError(problems, "cmd-duration", "Override duration", `must be more than 0 and at most `
        + `${group(MAX_EXPIRY)} s, got ${JSON.stringify($("#cmd-duration").value)}`);
    } else body.duration_sec = duration;
  }
  body.priority = $("#cmd-priority").value;
  return { body, problems };
}

function newId() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);   // also where randomUUID is missing (plain http off localhost)
  return `ui-${Date.now().toString(36)}-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function confirmEmergency(text) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "send"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    $("#confirm-cancel").focus();
  });
}

async function submitCommand(form, edgeId, channel, deviceId, errors, result) {
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  errors.replaceChildren();
  result.textContent = "";
  delete result.dataset.commandId;
  if (!mayControl(edgeId)) {
    errors.append(h("p", {}, `You may not command ${edgeId}.`));
    return;
  }
  const { body, problems } = readCommand(channel, deviceId, edgeId);
  if (problems.length) {
    errors.append(h("p", {}, "Not sent:"), h("ul", {}, problems.map((p) => h("li", {}, p.text))));
    for (const p of problems) {
      const el = document.getElementById(p.id);
      if (el) { el.setAttribute("aria-invalid", "true"); el.setAttribute("aria-errormessage", "cmd-errors"); }
    }
    document.getElementById(problems[0].id)?.focus();
    return;
  }
  const text = `${deviceId}.${channel.name}${body.value !== undefined ? ` = ${group(body.value)}${body.unit ? ` ${body.unit}`
    : ""}` : ""} on ${edgeId}`;
  if (body.priority === "emergency") {
    const ok = await confirmEmergency(`${text}. An emergency goes to the device at once, ahead of everything else, `
      + "and supersedes what waits on its channel.");
    if (!ok) { result.textContent = "Not sent: the emergency command was cancelled."; $("#cmd-send").focus(); return; }
  }
  const button = $("#cmd-send");
  button.disabled = true;
  const c = command(body.command_id, edgeId);
  fill(c, body);
  c.user = S.me.user;
  try {
    const answer = await api("/api/v1/commands", { method: "POST", body });
    addState(c, answer.state, new Date(serverNow()).toISOString(), null);
    result.dataset.commandId = body.command_id;
    result.replaceChildren(`Queued: ${text} (`, h("code", {}, body.command_id), `): ${answer.state}.`);
  } catch (err) {
    const reason = err.code ? `${err.code}: ${err.message}` : err.message;
    addState(c, "REFUSED", new Date(serverNow()).toISOString(), reason);
    result.dataset.commandId = body.command_id;
    errors.append(h("p", { id: "cmd-refused" }, `The router refused the command: ${reason}`));
  } finally {
    button.disabled = false;
    updateCommand(c);
  }
}

// -- history

const HISTORY_LIMIT = 500;

function renderHistory(params) {
  const rangeValue = params.get("range") || (params.get("since") || params.get("until") ? "custom" : "24h");
  const siteSelect = h("select", { id: "f-edge", name: "edge_id" }, h("option", { value: "" }, "All sites"));
  const form = h("form", { id: "history-form", class: "filters card", novalidate: true },
    h("div", { class: "grid" },
      h("div", { class: "field" }, h("label", { for: "f-edge" }, "Site"), siteSelect),
      h("div", { class: "field" }, h("label", { for: "f-user" }, "User"),
        h("input", { id: "f-user", name: "user_id", list: "f-users", autocomplete: "off", value: params.get("user_id")
          || "" }), h("datalist", { id: "f-users" })),
      h("div", { class: "field" }, h("label", { for: "f-status" }, "Status"),
        h("select", { id: "f-status", name: "status" }, h("option", { value: "" }, "Any status"),
          h("option", { value: PROBLEMS }, "Refusals and failures"),
          STATUSES.map((s) => h("option", { value: s }, s)))),
      h("div", { class: "field" }, h("label", { for: "f-kind" }, "Kind"),
        h("select", { id: "f-kind", name: "kind" }, h("option", { value: "" }, "Any kind"),
          KINDS.map((k) => h("option", { value: k }, k)))),
      h("div", { class: "field" }, h("label", { for: "f-range" }, "Time"),
        h("select", { id: "f-range", name: "range" }, RANGES.map(([v, t]) => h("option", { value: v }, t)))),
      h("div", { class: "field custom-range" }, h("label", { for: "f-since" }, "From"),
        h("input", { id: "f-since", name: "since", type: "datetime-local", step: 1 })),
      h("div", { class: "field custom-range" }, h("label", { for: "f-until" }, "To"),
        h("input", { id: "f-until", name: "until", type: "datetime-local", step: 1 }))),
    h("p", { id: "history-error", class: "error", role: "alert" }),
    h("div", { class: "buttons" }, h("button", { type: "submit", id: "history-apply" }, "Apply filters"),
      h("button", { type: "button", id: "history-csv", class: "secondary" }, "Export CSV"),
      h("button", { type: "button", id: "history-reset", class: "quiet" }, "Reset")));
  setMain("History", h("h1", {}, "History"),
    h("p", { class: "muted" }, "The router's audit log: every command, every state change, every refusal."),
    form,
    h("p", { id: "history-count", role: "status", class: "muted" }),
    h("div", { class: "table-wrap" }, h("table", { id: "history", class: "history" },
      h("caption", { class: "visually-hidden" }, "Audit rows"),
      h("thead", {}, h("tr", {}, ["Time", "Kind", "Command", "Site", "User", "Status", "Detail"].map((t) =>
        h("th", { scope: "col" }, t)))),
      h("tbody", { id: "history-body" }))));
  $("#f-status").value = params.get("status") || "";
  $("#f-kind").value = params.get("kind") || "";
  $("#f-range").value = RANGES.some(([v]) => v === rangeValue) ? rangeValue : "24h";
  const toLocal = (iso) => { const ms = parseTime(iso); if (ms === null) return ""; const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:`
      + `${pad(d.getSeconds())}`; };
  $("#f-since").value = toLocal(params.get("since"));
  $("#f-until").value = toLocal(params.get("until"));
  S.historyEdge = params.get("edge_id") || "";
  const showCustom = () => form.querySelectorAll(".custom-range").forEach((el) => {
    el.hidden = $("#f-range").value !== "custom";
  });
  $("#f-range").addEventListener("change", showCustom);
  showCustom();
  fillHistorySites();
  form.addEventListener("submit", (event) => { event.preventDefault(); applyHistory(true); });
  $("#history-csv").addEventListener("click", exportCsv);
  $("#history-reset").addEventListener("click", () => {
    form.reset();
    $("#f-range").value = "24h";
    showCustom();
    applyHistory(true);
  });
  focusMain();
  applyHistory(false);
}

function fillHistorySites() {
  const select = $("#f-edge");
  if (!select) return;
  const wanted = select.value || S.historyEdge || "";
  const ids = [...new Set([...S.edges.keys(), wanted].filter(Boolean))].sort();
  const signature = ids.join(",");
  if (select.dataset.sig !== signature) {
    select.dataset.sig = signature;
    select.replaceChildren(h("option", { value: "" }, "All sites"), ...ids.map((id) => h("option", { value: id }, id)));
  }
  select.value = wanted;
}

function historyQuery() {
  const q = new URLSearchParams();
  const problems = [];
  const edge = $("#f-edge").value; const user = $("#f-user").value.trim();
  const status = $("#f-status").value; const kind = $("#f-kind").value; const rangeValue = $("#f-range").value;
  if (edge) q.set("edge_id", edge);
  if (user) q.set("user_id", user);
  if (status) q.set("status", status);
  if (kind) q.set("kind", kind);
  const shown = new URLSearchParams(q);
  if (rangeValue === "custom") {
    for (const [name, label] of [["since", "From"], ["until", "To"]]) {
      const value = $(`#f-${name}`).value;
      if (!value) continue;
      const ms = Date.parse(value);
      if (!Number.isFinite(ms)) { problems.push(`${label}: ${JSON.stringify(value)} is not a date and time`); continue; }
      q.set(name, new Date(ms).toISOString());
      shown.set(name, new Date(ms).toISOString());
    }
    if (q.get("since") && q.get("until") && q.get("since") > q.get("until")) {
      problems.push("From: must be before To");
    }
    shown.set("range", "custom");
  } else if (rangeValue !== "all") {
    q.set("since", rangeValue);
    shown.set("range", rangeValue);
  } else shown.set("range", "all");
  return { q, shown, problems };
}

async function applyHistory(updateUrl) {
  const { q, shown, problems } = historyQuery();
  const error = $("#history-error");
  error.textContent = problems.join("; ");
  if (problems.length) return;
  if (updateUrl) history.replaceState(null, "", `#/history?${shown}`);
  q.set("order", "desc");
  q.set("limit", String(HISTORY_LIMIT));
  const count = $("#history-count");
  count.textContent = "Loading…";
  let data;
  try {
    data = await api(`/api/v1/audit?${q}`);
  } catch (err) {
    count.textContent = "";
    error.textContent = `The router refused the query: ${err.message}`;
    return;
  }
  if (S.view !== "history") return;
  const body = $("#history-body");
  body.replaceChildren(...data.rows.map((r) => h("tr", { dataset: { kind: r.kind, status: r.status } },
    h("td", {}, timeEl(r.at, true)), h("td", {}, r.kind),
    h("td", {}, r.command_id ? h("code", {}, r.command_id) : "—"), h("td", {}, r.edge_id || "—"),
    h("td", { class: "user" }, r.user_id || "—"), h("td", { class: "status" }, stateBadge(r.status)),
    h("td", { class: "detail" }, r.detail || ""))));
  count.textContent = data.count >= HISTORY_LIMIT ? `${data.count} rows (the newest ${HISTORY_LIMIT}: narrow the `
    + "filters, or export CSV for all)" : `${data.count} row${data.count === 1 ? "" : "s"}`;
  $("#history").dataset.loaded = shown.toString();   // which filters the rows shown answer
  const users = [...new Set(data.rows.map((r) => r.user_id).filter(Boolean))].sort();
  $("#f-users").replaceChildren(...users.map((u) => h("option", { value: u })));
}

async function exportCsv() {
  const { q, problems } = historyQuery();
  const error = $("#history-error");
  error.textContent = problems.join("; ");
  if (problems.length) return;
  q.set("format", "csv");
  q.set("limit", "100000");
  try {
    const response = await api(`/api/v1/audit?${q}`, { raw: true });
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const d = new Date();
    const a = h("a", { href: url, download: `audit-${d.getFullYear()}${pad(d.getMonth() + 1)}${pad(d.getDate())}-`
      + `${pad(d.getHours())}${pad(d.getMinutes())}${pad(d.getSeconds())}.csv`, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 10000);
    announce("The CSV file is downloaded");
  } catch (err) {
    error.textContent = `The export failed: ${err.message}`;
  }
}

// ---- start -------------------------------------------------------------------------------------------

function tick() {
  for (const el of document.querySelectorAll("[data-ago]")) el.textContent = agoText(Number(el.dataset.ago));
  for (const el of document.querySelectorAll("[data-ends]")) {
    el.textContent = formatDuration((Number(el.dataset.ends) - serverNow()) / 1000);
  }
}

async function start() {
  $("#signout").addEventListener("click", () => signOut("Signed out."));
  $("#skip").addEventListener("click", (event) => {   // not a hash route: focus the content instead
    event.preventDefault();
    $("#main").focus();
  });
  window.addEventListener("hashchange", route);
  window.setInterval(tick, 1000);
  try {
    S.settings = { ...S.settings, ...(await api("/api/v1/ui")) };
  } catch {
    banner("The router is not answering: reload the page to try again.");
  }
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    S.restoring = true;   // a hash change meanwhile must not show the sign-in form, which signIn then replaces
    try {
      await signIn(saved);
      return;
    } catch (err) {
      sessionStorage.removeItem(TOKEN_KEY);
      S.loginMessage = err.status === 0 ? "The router is not answering." : `Signed out: ${err.message}`;
    } finally {
      S.restoring = false;
    }
  }
  route();
}

window.addEventListener("unhandledrejection", (event) => {   // still logged: a bug must show in the console
  banner(`Something went wrong: ${event.reason && event.reason.message ? event.reason.message : event.reason}`);
});

start();
