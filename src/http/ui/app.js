// The operator console: plain ES module, talks only to the admin API.
const $ = (id) => document.getElementById(id);
const KEY = "agent-bridge-token";
const POLL_MS = 2000;
let timers = [];
let selectedSession = null;
let selectedHook = null;
let lastMessageAt = null;
let seenMessages = new Set();
let sessions = [];

function token() { return sessionStorage.getItem(KEY) || ""; }

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

function showError(msg) {
  const box = $("error");
  if (!msg) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = msg; box.hidden = false;
}

class ApiError extends Error {}
class AuthError extends ApiError {}

async function api(method, path, body, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  if (token()) headers["Authorization"] = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (resp.status === 401 || resp.status === 403) {
    let msg = "sign-in refused";
    try { msg = (await resp.json()).error || msg; } catch (_) { /* not JSON */ }
    signOut("Not signed in: " + msg);
    throw new AuthError(msg);
  }
  if (opts.raw) return resp;
  if (!resp.ok) {
    let msg = resp.status + " " + resp.statusText;
    try { const j = await resp.json(); if (j.error) msg = resp.status + ": " + j.error; } catch (_) { /* not JSON */ }
    throw new ApiError(msg);
  }
  if (resp.status === 204) return null;
  const ct = resp.headers.get("content-type") || "";
  return ct.includes("json") ? resp.json() : resp.text();
}

function guard(fn) {
  return async (...args) => {
    try { await fn(...args); } catch (e) { if (!(e instanceof AuthError)) showError(e.message); }
  };
}

// ---- navigation ----
function stopTimers() { timers.forEach(clearInterval); timers = []; }
function every(fn) { fn(); timers.push(setInterval(fn, POLL_MS)); }

function show(view) {
  stopTimers();
  document.querySelectorAll(".view").forEach((s) => { s.hidden = s.id !== view; });
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === view));
  if (view === "overview") every(guard(refreshOverview));
  if (view === "conversations") every(guard(refreshConversations));
  if (view === "webhooks") every(guard(refreshWebhooks));
}

function route() {
  if (!sessionStorage.getItem(KEY + "-in")) { $("nav").hidden = true; show("signin"); return; }
  $("nav").hidden = false;
  const view = location.hash.slice(1) || "overview";
  show(["overview", "conversations", "webhooks", "try"].includes(view) ? view : "overview");
}

function signOut(reason) {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(KEY + "-in");
  route();
  showError(reason || "");
}

async function signIn(ev) {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("token").value.trim());
  $("token").value = "";
  try {
    await api("GET", "/sessions?limit=1");
  } catch (e) {
    // A refused token has already sent us back here with the API's reason.
    if (!(e instanceof AuthError)) showError(e.message);
    return;
  }
  sessionStorage.setItem(KEY + "-in", "1");
  showError("");
  if (!location.hash) location.hash = "#overview"; else route();
}

// ---- overview ----
let previousTurns = null;

function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    (m[3] || "").replace(/(\w+)="((?:[^"\\]|\\.)*)"/g, (_, k, v) => { labels[k] = v; });
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

function sum(samples, name) {
  return samples.filter((s) => s.name === name).reduce((a, s) => a + s.value, 0);
}

function quantile(samples, name, q) {
  const buckets = samples.filter((s) => s.name === name + "_bucket")
    .map((s) => ({ le: s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), n: s.value }))
    .sort((a, b) => a.le - b.le);
  const total = buckets.length ? buckets[buckets.length - 1].n : 0;
  if (!total) return null;
  const want = q * total;
  let prevLe = 0, prevN = 0;
  for (const b of buckets) {
    if (b.n >= want) {
      if (b.le === Infinity) return prevLe;
      const span = b.n - prevN;
      return prevLe + (span ? (want - prevN) / span : 0) * (b.le - prevLe);
    }
    prevLe = b.le; prevN = b.n;
  }
  return prevLe;
}

function ms(seconds) {
  if (seconds === null) return "–";
  return seconds < 1 ? Math.round(seconds * 1000) + " ms" : seconds.toFixed(2) + " s";
}

async function refreshOverview() {
  const readyResp = await api("GET", "/readyz", undefined, { raw: true });
  const ready = await readyResp.json();
  $("ready-status").textContent = "Bridge: " + (ready.status || (readyResp.ok ? "ready" : "not ready"));
  $("ready-status").className = readyResp.ok ? "up" : "down";
  const parts = $("parts");
  parts.replaceChildren(...Object.entries(ready.parts || {}).map(([name, state]) =>
    el("li", { "data-part": name }, el("span", { class: "label" }, name),
      el("span", { class: String(state) === "up" ? "up" : "down" }, String(state)))));
  const samples = parseMetrics(await api("GET", "/metrics"));
  const turns = sum(samples, "bridge_turns_total");
  const now = Date.now();
  if (previousTurns) {
    const perMin = ((turns - previousTurns.n) * 60000) / Math.max(1, now - previousTurns.at);
    $("m-turns").textContent = perMin.toFixed(1);
  } else {
    $("m-turns").textContent = "0.0";
  }
  previousTurns = { n: turns, at: now };
  $("m-p50").textContent = ms(quantile(samples, "bridge_agent_latency_seconds", 0.5));
  $("m-p99").textContent = ms(quantile(samples, "bridge_agent_latency_seconds", 0.99));
  $("m-queue").textContent = String(sum(samples, "bridge_queue_depth"));
  $("m-backlog").textContent = String(sum(samples, "bridge_webhook_outbox_backlog"));
}

// ---- conversations ----
async function refreshConversations() {
  const data = await api("GET", "/sessions");
  sessions = data.sessions || [];
  renderSessions();
  if (selectedSession) await pollTranscript();
}

function renderSessions() {
  const q = $("conv-search").value.trim().toLowerCase();
  const rows = sessions.filter((s) => !q || [s.channel_id, s.user_id, s.key, s.workspace].some((f) => (f || "").toLowerCase().includes(q)));
  $("conv-list").replaceChildren(...rows.map((s) => {
    const li = el("li", { "data-session": s.session_id || "", class: s.session_id === selectedSession ? "selected" : "" },
      el("strong", {}, (s.platform || "") + " " + (s.channel_id || "")),
      el("span", { class: "muted" }, " " + (s.user_id || "") + " · " + (s.last_activity || "")));
    li.addEventListener("click", guard(() => openSession(s)));
    return li;
  }));
}

async function openSession(s) {
  if (!s.session_id) { showError("this conversation has no agent session yet"); return; }
  selectedSession = s.session_id;
  lastMessageAt = null;
  seenMessages = new Set();
  $("transcript").replaceChildren();
  $("conv-title").textContent = s.key;
  $("conv-personality").textContent = "Personality: " + (s.personality || "default") + " · session " + s.session_id;
  $("conv-detail").hidden = false;
  renderSessions();
  await pollTranscript();
}

async function pollTranscript() {
  const id = selectedSession;
  const q = lastMessageAt ? "?since=" + encodeURIComponent(lastMessageAt) : "";
  const data = await api("GET", "/sessions/" + encodeURIComponent(id) + "/history" + q);
  if (id !== selectedSession) return;
  for (const m of data.messages || []) {
    if (seenMessages.has(m.id)) continue;
    seenMessages.add(m.id);
    lastMessageAt = m.timestamp;
    const meta = m.role + " · " + m.timestamp + (m.user_id ? " · " + m.user_id : "") + (m.feedback ? " · feedback: " + m.feedback : "");
    $("transcript").append(el("li", { class: m.role }, el("span", { class: "meta" }, meta), m.content));
  }
}

async function resetSession() {
  if (!selectedSession || !confirm("Reset this conversation?")) return;
  await api("DELETE", "/sessions/" + encodeURIComponent(selectedSession));
  selectedSession = null;
  $("conv-detail").hidden = true;
  await refreshConversations();
}

// ---- webhooks ----
function events(text) { return text.split(",").map((e) => e.trim()).filter(Boolean); }

async function refreshWebhooks() {
  const data = await api("GET", "/webhooks");
  const hooks = data.webhooks || [];
  $("wh-list").replaceChildren(...hooks.map((h) => {
    const li = el("li", { "data-webhook": h.id, class: h.id === selectedHook?.id ? "selected" : "" },
      el("strong", {}, h.url), " ",
      el("span", { class: h.enabled ? "up" : "down" }, h.enabled ? "enabled" : "disabled" + (h.disabled_reason ? " (" + h.disabled_reason + ")" : "")),
      el("span", { class: "muted" }, " · " + (h.events || []).join(", ")));
    li.addEventListener("click", guard(() => openHook(h)));
    return li;
  }));
  if (selectedHook) {
    const fresh = hooks.find((h) => h.id === selectedHook.id);
    if (!fresh) { selectedHook = null; $("wh-detail").hidden = true; return; }
    selectedHook = fresh;
    await refreshDeliveries();
  }
}

async function openHook(h) {
  selectedHook = h;
  $("wh-title").textContent = h.url + " (" + h.id + ")";
  $("wh-edit-events").value = (h.events || []).join(", ");
  $("wh-detail").hidden = false;
  await refreshDeliveries();
}

async function refreshDeliveries() {
  const id = selectedHook.id;
  const data = await api("GET", "/webhooks/" + encodeURIComponent(id) + "/deliveries");
  if (!selectedHook || selectedHook.id !== id) return;
  const rows = [];
  for (const d of data.deliveries || []) {
    const log = d.attempt_log && d.attempt_log.length ? d.attempt_log : [{ response_code: d.response_code, latency_ms: d.latency_ms, error: d.error }];
    const last = log[log.length - 1];
    const button = el("button", { type: "button", class: "small redeliver", "data-delivery": d.id }, "Redeliver");
    button.addEventListener("click", guard(async () => {
      await api("POST", "/webhooks/" + encodeURIComponent(id) + "/deliveries/" + encodeURIComponent(d.id) + "/retry");
      await refreshDeliveries();
    }));
    rows.push(el("tr", { "data-delivery": d.id, "data-status": d.status },
      el("td", {}, d.event_type || d.event_id),
      el("td", { class: "status" }, d.status),
      el("td", { class: "code" }, last.response_code == null ? "–" : String(last.response_code)),
      el("td", {}, last.latency_ms == null ? "–" : last.latency_ms + " ms"),
      el("td", {}, String(d.attempts)),
      el("td", { class: "excerpt" }, (last.error || last.response_body || "").slice(0, 200)),
      el("td", {}, button)));
    for (const a of log.slice(0, -1).reverse()) {
      rows.push(el("tr", { class: "muted attempt" }, el("td", {}, "  ↳ " + (a.attempted_at || "")), el("td", {}, ""),
        el("td", {}, a.response_code == null ? "–" : String(a.response_code)),
        el("td", {}, a.latency_ms == null ? "–" : a.latency_ms + " ms"), el("td", {}, ""),
        el("td", { class: "excerpt" }, (a.error || a.response_body || "").slice(0, 200)), el("td", {}, "")));
    }
  }
  $("deliveries").tBodies[0].replaceChildren(...rows);
}

function revealSecret(secret) {
  $("wh-secret-value").textContent = secret;
  $("wh-secret").hidden = false;
}

async function createHook(ev) {
  ev.preventDefault();
  const body = { url: $("wh-url").value.trim(), events: events($("wh-events").value) };
  const d = $("wh-description").value.trim();
  if (d) body.description = d;
  const created = await api("POST", "/webhooks", body);
  revealSecret(created.secret);
  $("wh-url").value = "";
  await refreshWebhooks();
}

async function hookAction(path, body) {
  if (!selectedHook) return null;
  const result = await api("POST", "/webhooks/" + encodeURIComponent(selectedHook.id) + path, body);
  await refreshWebhooks();
  return result;
}

// ---- try it ----
async function tryIt(ev) {
  ev.preventDefault();
  const out = $("try-answer");
  const status = $("try-status");
  out.textContent = "";
  status.textContent = "asking…";
  $("try-send").disabled = true;
  try {
    const resp = await api("POST", "/agent-query", { query: $("try-prompt").value, stream: true },
      { raw: true, headers: { Accept: "text/event-stream" } });
    if (!resp.ok) {
      let msg = String(resp.status);
      try { msg += ": " + (await resp.json()).error; } catch (_) { /* not JSON */ }
      throw new ApiError(msg);
    }
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value.replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue;
        const payload = JSON.parse(data.join("\n"));
        if (event === "delta") out.textContent += payload.text;
        else if (event === "done") { status.textContent = "done · " + payload.request_id; out.textContent = payload.response; }
        else if (event === "error") { status.textContent = ""; showError("The agent failed: " + payload.error); }
      }
    }
  } finally {
    $("try-send").disabled = false;
  }
}

// ---- wiring ----
$("signin-form").addEventListener("submit", signIn);
$("signout").addEventListener("click", () => signOut(""));
$("conv-search").addEventListener("input", renderSessions);
$("conv-reset").addEventListener("click", guard(resetSession));
$("wh-form").addEventListener("submit", guard(createHook));
$("wh-secret-copy").addEventListener("click", guard(async () => {
  await navigator.clipboard.writeText($("wh-secret-value").textContent);
  $("wh-secret-copy").textContent = "Copied";
}));
$("wh-secret-dismiss").addEventListener("click", () => { $("wh-secret-value").textContent = ""; $("wh-secret").hidden = true; $("wh-secret-copy").textContent = "Copy"; });
$("wh-save-events").addEventListener("click", guard(() => hookAction("/events", { events: events($("wh-edit-events").value) })));
$("wh-rotate").addEventListener("click", guard(async () => { const r = await hookAction("/secret/rotate"); if (r) revealSecret(r.secret); }));
$("wh-enable").addEventListener("click", guard(() => hookAction("/enable")));
$("wh-delete").addEventListener("click", guard(async () => {
  if (!selectedHook || !confirm("Delete this webhook?")) return;
  await api("DELETE", "/webhooks/" + encodeURIComponent(selectedHook.id));
  selectedHook = null;
  $("wh-detail").hidden = true;
  await refreshWebhooks();
}));
$("try-form").addEventListener("submit", (ev) => guard(tryIt)(ev));
window.addEventListener("hashchange", () => { showError(""); route(); });
route();
