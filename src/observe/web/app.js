// The status page: one snapshot of the node per Server-Sent Event (`snapshot`, once a
// second), rendered with DOM calls only (no innerHTML: every text from the agent is text).
// The session cookie of the login authenticates the event stream; when it ends (`logout`
// event, or a 401) the page goes back to the login form.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) {
    node.append(c instanceof Node ? c : document.createTextNode(c === null || c === undefined ? "" : String(c)));
  }
  return node;
}

function fixed(v, digits) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  return (h ? h + ":" + two(m) : m) + ":" + two(r);
}

function mosClass(mos) {
  if (mos === null || mos === undefined) return "";
  return mos >= 4.0 ? "mos-good" : mos >= 3.6 ? "mos-fair" : "mos-poor";
}

function direction(d) {
  if (!d) return el("td", {}, "–");
  return el("td", { class: mosClass(d.mos) },
    fixed(d.mos, 2) + " / " + fixed(d.jitter_ms, 1) + " ms / " + fixed(d.lost_percent, 1) + " %");
}

function renderCalls(s) {
  const body = document.querySelector("#calls tbody");
  const rows = s.calls.map((c) => {
    const listen = c.listen
      ? el("button", { type: "button", class: "listen", "data-call": c.id },
          listening.callId === c.id ? "Stop" : "Listen")
      : "–";
    // The figures first, so a phone shows them without scrolling the table.
    return el("tr", { "data-call": c.id },
      el("td", {}, c.service || "–"),
      el("td", { class: "state" }, c.state.replace("_", " ")),
      el("td", { class: "duration" }, duration(c.duration_s)),
      direction(c.caller_to_callee),
      direction(c.callee_to_caller),
      el("td", {}, listen),
      el("td", {}, (c.caller || "?") + " → " + (c.callee || "?")),
      el("td", { class: "id", title: c.id }, c.id));
  });
  body.replaceChildren(...rows);
  document.getElementById("no-calls").hidden = s.calls.length > 0;
  document.getElementById("calls-count").textContent =
    "(" + s.calls.length + (s.calls_not_shown ? " shown, " + s.calls_not_shown + " more" : "") + ")";
}

// The last intervals as a small inline SVG: offered and answered per interval.
function chart(history, open) {
  const points = history.concat([open]);
  const w = 300, h = 70, pad = 4;
  const max = Math.max(1, ...points.map((p) => p.offered));
  const x = (i) => pad + (points.length < 2 ? 0 : (i * (w - 2 * pad)) / (points.length - 1));
  const y = (v) => h - pad - (v * (h - 2 * pad)) / max;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "offered and answered per interval");
  const axis = document.createElementNS(SVG, "line");
  axis.setAttribute("class", "axis");
  axis.setAttribute("x1", pad); axis.setAttribute("x2", w - pad);
  axis.setAttribute("y1", h - pad); axis.setAttribute("y2", h - pad);
  svg.append(axis);
  for (const key of ["offered", "answered"]) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", key);
    line.setAttribute("points", points.map((p, i) => x(i).toFixed(1) + "," + y(p[key]).toFixed(1)).join(" "));
    svg.append(line);
  }
  return svg;
}

function kpi(name, value) {
  return [el("div", {}, el("dt", {}, name), el("dd", {}, value))];
}

function renderServices(s) {
  const cards = s.services.map((svc) => {
    const o = svc.open;
    const start = o.start ? new Date(o.start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "–";
    return el("div", { class: "card", "data-service": svc.name },
      el("h3", {}, svc.name + " ", el("span", { class: "muted" }, "since " + start)),
      el("dl", { class: "kpis" },
        ...kpi("Offered", o.offered), ...kpi("Answered", o.answered), ...kpi("Abandoned", o.abandoned),
        ...kpi("Service level", fixed(o.service_level_percent, 0) + " %"),
        ...kpi("ASA", fixed(o.asa_s, 0) + " s"), ...kpi("MOS", fixed(o.mos_mean, 2))),
      chart(svc.history, o),
      el("div", { class: "legend" }, el("span", { class: "o" }, "— offered"), " ",
        el("span", { class: "a" }, "— answered"), " · last " + svc.history.length + " intervals"));
  });
  document.getElementById("services").replaceChildren(...cards);
}

function renderSensors(s) {
  const alerts = s.alerts.map((a) => el("div", { class: "alert" },
    a.device + ": " + a.reading + " " + a.kind + (a.value !== null ? " (" + a.value + " " + a.unit + ")" : "") +
    " since " + new Date(a.started).toLocaleTimeString()));
  document.getElementById("alerts").replaceChildren(...alerts);
  const cards = s.sensors.map((d) => el("div", { class: "card" },
    el("h3", {}, d.device + " ", el("span", { class: "muted" }, d.model)),
    el("dl", { class: "kpis" },
      ...d.values.flatMap((v) => kpi(v.name, fixed(v.value, 1) + " " + v.unit)),
      ...kpi("Link", d.communication + (d.stale ? " (stale)" : ""))),
    d.states.length ? el("p", {}, d.states.join(", ")) : ""));
  document.getElementById("sensors").replaceChildren(...cards);
  document.getElementById("no-sensors").hidden = s.sensors.length > 0;
}

function renderSystem(s) {
  const rows = [
    ["Spool", (s.spool.records === null ? "–" : s.spool.records) + " records, " +
      (s.spool.bytes === null ? "–" : Math.round(s.spool.bytes / 1024) + " KiB") +
      ", oldest " + fixed(s.spool.oldest_age_s, 0) + " s"],
    ["Records lost before the spool", s.spool.records_dropped],
    ["Uplink", s.uplink.consecutive_failures > 0 ? "failing (" + s.uplink.consecutive_failures + " in a row)" : "ok"],
    ["Last upload", s.uplink.last_success ? new Date(s.uplink.last_success).toLocaleTimeString() : "never"],
    ["Records acknowledged", s.uplink.records_acked],
    ["Packets captured", s.capture.packets],
    ["Kernel drops", s.capture.kernel_drops],
    ["Calls / streams tracked", s.capture.active_calls + " / " + s.capture.active_streams],
  ];
  document.getElementById("system").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function render(s) {
  document.getElementById("node").textContent = s.node + " · " + s.version;
  const health = document.getElementById("health");
  health.textContent = s.healthy ? "healthy" : "degraded: " + s.health_reasons.join("; ");
  health.className = "badge " + (s.healthy ? "ok" : "bad");
  document.getElementById("updated").textContent = "updated " + new Date(s.time).toLocaleTimeString();
  document.body.dataset.seq = s.seq;
  renderCalls(s);
  renderServices(s);
  renderSensors(s);
  renderSystem(s);
}

// Live listen from the table: the WHEP client (/whep/listen.js, served when `[listen]` is
// enabled; the session cookie authenticates it) plays one call at a time in a hidden <audio>.
// A click is the user gesture that lets it play. When the call ends the agent ends the
// session and the page says so at once. Driven in a real browser by tests/it/listen.rs
// (tests/listen/status_page.js).
const listening = { callId: null, session: null, attempt: null };

function listenState(text) {
  document.getElementById("listen-state").textContent = text;
  for (const b of document.querySelectorAll("button.listen")) {
    b.textContent = b.dataset.call === listening.callId ? "Stop" : "Listen";
  }
}

// The WHEP client script, fetched on the first click only (an agent without `[listen]`
// answers 404, and the page should not ask for it on every load).
function loadListenScript() {
  return new Promise((resolve) => {
    const script = document.createElement("script");
    script.src = "/whep/listen.js";
    script.onload = resolve;
    script.onerror = resolve;
    document.head.appendChild(script);
  });
}

async function toggleListen(callId) {
  const previous = listening.session;
  const same = listening.callId === callId;
  listening.callId = null;
  listening.session = null;
  listening.attempt = null;
  if (previous) await previous.stop();
  if (same) { listenState(""); return; }
  if (typeof window.teledgeListen !== "function") await loadListenScript();
  if (typeof window.teledgeListen !== "function") {
    listenState("live listen is not enabled on this agent");
    return;
  }
  listening.callId = callId;
  listenState("connecting…");
  // This click's attempt: a later click (another call, or Stop) supersedes it.
  const attempt = {};
  listening.attempt = attempt;
  try {
    const session = await window.teledgeListen(callId, {
      audio: document.getElementById("listen-audio"),
      onended: () => {
        if (listening.attempt !== attempt) return;
        listening.callId = null;
        listening.session = null;
        listening.attempt = null;
        listenState("listening ended");
      },
    });
    if (listening.attempt !== attempt || listening.callId !== callId) { await session.stop(); return; }
    listening.session = session;
    const connected = () => {
      if (listening.session === session && session.pc.connectionState === "connected") listenState("listening");
    };
    session.pc.addEventListener("connectionstatechange", connected);
    connected();
  } catch (e) {
    if (listening.attempt !== attempt) return;
    listening.callId = null;
    listening.attempt = null;
    listenState("listen refused: " + e.message);
  }
}

function toLogin() {
  window.location.assign("/login");
}

document.addEventListener("DOMContentLoaded", () => {
  const events = new EventSource("/api/events");
  events.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
  events.addEventListener("logout", () => { events.close(); toLogin(); });
  events.addEventListener("error", async () => {
    // A refused stream (401) is not retried by the browser: find out why it stopped.
    const r = await fetch("/api/snapshot", { credentials: "same-origin", cache: "no-store" }).catch(() => null);
    if (r && r.status === 401) { events.close(); toLogin(); }
  });
  document.querySelector("#calls tbody").addEventListener("click", (e) => {
    const button = e.target.closest("button.listen");
    if (button) toggleListen(button.dataset.call);
  });
  document.getElementById("logout").addEventListener("click", async () => {
    events.close();
    await fetch("/api/logout", { method: "POST", credentials: "same-origin" }).catch(() => null);
    toLogin();
  });
});
