// The mesh dashboard: reads mesh control's admin API (/api/v1/...) and
// follows its server-sent events; no library, no build step.
"use strict";

const state = { overview: null, route: "map", service: null, positions: new Map(), layoutKey: "" };

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function fmt(n, d = 1) { return Number(n || 0).toFixed(d); }
function health(s) {
  if (s.instances > 0 && s.healthy === 0) return "bad";
  if (s.healthy < s.instances) return "warn";
  return "ok";
}
function short(v) { return v ? String(v).slice(0, 12) : "-"; }

// ---- data ----
function connect() {
  const es = new EventSource("../api/v1/events");
  es.addEventListener("overview", ev => {
    state.overview = JSON.parse(ev.data);
    render();
  });
  es.onerror = () => setBadge("reconnecting…", "warn");
}

function setBadge(text, cls) {
  const b = document.getElementById("sync");
  b.textContent = text;
  b.className = "badge " + (cls || "");
}

// ---- routing ----
function route() {
  const h = location.hash.replace(/^#\/?/, "");
  const [page, ...rest] = h.split("/");
  state.route = page || "map";
  state.service = rest.length ? decodeURIComponent(rest.join("/")) : null;
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  const id = state.route === "service" ? "view-service" : "view-" + state.route;
  const el = document.getElementById(id) || document.getElementById("view-map");
  el.hidden = false;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.tab === state.route);
  if (state.route === "service") loadService();
  render();
}

// ---- rendering ----
function render() {
  const o = state.overview;
  if (!o) return;
  const st = o.status;
  const bad = st.proxies.filter(p => p.state !== "in sync").length;
  if (!st.ready) setBadge("no model yet", "warn");
  else if (st.in_sync) setBadge(`${st.proxies.length} proxies in sync`, "ok");
  else setBadge(`${bad} of ${st.proxies.length} proxies out of sync`, "bad");
  document.getElementById("updated").textContent = "updated " + new Date(o.status.generated_at).toLocaleTimeString();
  switch (state.route) {
    case "services": renderServices(); break;
    case "service": loadService(); break;
    case "proxies": renderProxies(); break;
    default: renderMap();
  }
}

// layout places services on a circle (few) or a grid (many), in name
// order, kept while the set of services does not change.
function layout(names, w, h) {
  const key = names.join("\n") + "|" + w + "x" + h;
  if (key === state.layoutKey) return state.positions;
  const pos = new Map();
  const n = names.length;
  if (n <= 24) {
    const r = Math.max(60, Math.min(w, h) / 2 - 70);
    names.forEach((name, i) => {
      const a = (2 * Math.PI * i) / Math.max(n, 1) - Math.PI / 2;
      pos.set(name, { x: w / 2 + r * Math.cos(a), y: h / 2 + r * Math.sin(a) });
    });
  } else {
    const cols = Math.ceil(Math.sqrt(n * w / h));
    const rows = Math.ceil(n / cols);
    const dx = w / cols, dy = Math.max(40, h / rows);
    names.forEach((name, i) => {
      const c = i % cols, r = Math.floor(i / cols);
      pos.set(name, { x: dx * (c + 0.5), y: dy * (r + 0.5) + (c % 2 ? dy / 4 : 0) });
    });
  }
  state.positions = pos;
  state.layoutKey = key;
  return pos;
}

function renderMap() {
  const o = state.overview;
  const svg = document.getElementById("map");
  const box = svg.getBoundingClientRect();
  const w = Math.max(400, box.width), h = Math.max(300, box.height);
  const filter = document.getElementById("filter").value.trim().toLowerCase();
  const services = o.status.services.filter(s => !filter || s.name.toLowerCase().includes(filter));
  const names = services.map(s => s.name);
  const n = names.length;
  // Height grows with the grid so 500 services stay readable (scroll).
  const rows = n > 24 ? Math.ceil(n / Math.ceil(Math.sqrt(n * w / h))) : 0;
  const H = Math.max(h, rows * 44);
  svg.setAttribute("viewBox", `0 0 ${w} ${H}`);
  svg.style.height = H + "px";
  const pos = layout(names, w, H);
  const radius = n > 100 ? 7 : n > 24 ? 10 : 16;
  const parts = [];
  const shown = new Set(names);
  for (const e of o.traffic.edges) {
    if (!shown.has(e.caller) || !shown.has(e.callee)) continue;
    const a = pos.get(e.caller), b = pos.get(e.callee);
    const errs = e.error_ratio > 0.01;
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
    parts.push(`<g class="edge${errs ? " errors" : ""}" data-edge="${esc(e.caller)}->${esc(e.callee)}" data-rps="${fmt(e.rps, 3)}" data-errors="${fmt(e.error_ratio, 4)}">` +
      `<title>${esc(e.caller)} → ${esc(e.callee)}: ${fmt(e.rps, 2)} req/s, ${fmt(100 * e.error_ratio)}% errors, p99 ${fmt(e.p99_ms)} ms (total ${e.total.issued})</title>` +
      `<line x1="${a.x}" y1="${a.y}" x2="${b.x}" y2="${b.y}" marker-end="url(#arrow)"></line>` +
      (n <= 100 ? `<text x="${mx}" y="${my - 4}">${fmt(e.rps, 1)} rps · ${fmt(100 * e.error_ratio)}% · p99 ${fmt(e.p99_ms)}ms</text>` : "") +
      `</g>`);
  }
  for (const s of services) {
    const p = pos.get(s.name);
    const hc = health(s);
    parts.push(`<g class="node ${hc}" data-service="${esc(s.name)}" data-health="${hc}" transform="translate(${p.x},${p.y})">` +
      `<title>${esc(s.name)}: ${s.healthy}/${s.instances} healthy, ${s.draining} draining</title>` +
      `<circle r="${radius}"></circle>` +
      `<text y="${radius + 13}">${esc(s.name)}</text></g>`);
  }
  svg.innerHTML = `<defs><marker id="arrow" viewBox="0 0 10 10" refX="${radius + 9}" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#8a94a6"></path></marker></defs>` + parts.join("");
  document.getElementById("mapinfo").textContent = `${n} services, ${o.traffic.edges.length} edges; rates over ${o.traffic.window_seconds}s`;
}

function rates(name) {
  let inRPS = 0, outRPS = 0;
  for (const e of state.overview.traffic.edges) {
    if (e.callee === name) inRPS += e.rps;
    if (e.caller === name) outRPS += e.rps;
  }
  return [inRPS, outRPS];
}

function renderServices() {
  const rows = state.overview.status.services.map(s => {
    const [i, o] = rates(s.name);
    return `<tr data-service="${esc(s.name)}"><td><a href="#/service/${encodeURIComponent(s.name)}">${esc(s.name)}</a></td><td>${s.instances}</td>` +
      `<td class="health-${s.healthy < s.instances ? "unhealthy" : "healthy"}">${s.healthy}</td><td>${s.draining}</td><td>${esc(s.protocol)}</td>` +
      `<td>${esc(s.localities.join(", ") || "-")}</td><td>${fmt(i, 2)}</td><td>${fmt(o, 2)}</td></tr>`;
  });
  document.querySelector("#services tbody").innerHTML = rows.join("");
}

async function loadService() {
  if (!state.service) return;
  try {
    const r = await fetch("../api/v1/status?service=" + encodeURIComponent(state.service));
    const st = await r.json();
    state.serviceDetail = st.services[0] || null;
  } catch (e) {
    state.serviceDetail = null;
  }
  renderService();
}

function edgeRows(list, who) {
  if (!list.length) return `<tr><td colspan="7" class="muted">none reported</td></tr>`;
  return list.map(e => `<tr><td><a href="#/service/${encodeURIComponent(e[who])}">${esc(e[who])}</a></td><td>${fmt(e.rps, 2)}</td>` +
    `<td>${fmt(100 * e.error_ratio)}%</td><td>${fmt(e.p50_ms)} ms</td><td>${fmt(e.p99_ms)} ms</td><td>${e.in_progress}</td><td>${e.total.issued}</td></tr>`).join("");
}

function renderService() {
  const el = document.getElementById("view-service");
  const name = state.service;
  if (!state.overview || !name) return;
  const s = state.overview.status.services.find(x => x.name === name);
  const d = state.serviceDetail && state.serviceDetail.name === name ? state.serviceDetail : null;
  const edges = state.overview.traffic.edges;
  const head = `<tr><th>Service</th><th>req/s</th><th>errors</th><th>p50</th><th>p99</th><th>in flight</th><th>total</th></tr>`;
  let html = `<h2>${esc(name)}</h2>`;
  if (!s) {
    el.innerHTML = html + `<p class="muted">not in the model</p>`;
    return;
  }
  html += `<p>${s.healthy}/${s.instances} healthy, ${s.draining} draining · protocol ${esc(s.protocol)} · ${esc(s.localities.join(", ") || "no locality")}</p>`;
  html += `<h3>Instances</h3><table><tr><th>ID</th><th>Node</th><th>Address</th><th>Health</th><th>Locality</th></tr>`;
  html += d && d.endpoints ? d.endpoints.map(e => `<tr><td>${esc(e.id)}</td><td>${esc(e.node)}</td><td>${esc(e.address)}</td>` +
    `<td class="health-${esc(e.health)}">${esc(e.health)}</td><td>${esc(e.locality || "-")}</td></tr>`).join("") : `<tr><td colspan="5" class="muted">loading…</td></tr>`;
  html += `</table>`;
  html += `<h3>Callers</h3><table>${head}${edgeRows(edges.filter(e => e.callee === name), "caller")}</table>`;
  html += `<h3>Callees</h3><table>${head}${edgeRows(edges.filter(e => e.caller === name), "callee")}</table>`;
  html += `<h3>Policy</h3><pre>${esc(d && d.policy ? JSON.stringify(d.policy, null, 2) : "-")}</pre>`;
  el.innerHTML = html;
}

function renderProxies() {
  const rows = state.overview.status.proxies.map(p => {
    const t = {};
    for (const x of p.types || []) t[x.type] = x;
    const col = k => !t[k] ? "-" : t[k].state === "nacked" ? "NACK " + short(t[k].acked) : short(t[k].acked) + (t[k].state === "stale" ? "*" : "");
    const cert = p.cert_expiry ? new Date(p.cert_expiry).toISOString() : "-";
    return `<tr class="state-${p.state.replace(" ", "-")}" data-node="${esc(p.node)}"><td>${esc(p.node)}</td><td>${esc(p.kind)}</td><td>${esc(p.service || "-")}</td>` +
      `<td>${esc(p.locality || "-")}</td><td>${col("cluster")}</td><td>${col("endpoint")}</td><td>${col("listener")}</td><td>${col("route")}</td>` +
      `<td>${esc(p.state)}</td><td>${esc(cert)}</td><td class="reason">${esc(p.reason || "")}</td></tr>`;
  });
  document.querySelector("#proxies tbody").innerHTML = rows.join("");
}

window.addEventListener("hashchange", route);
window.addEventListener("resize", () => { state.layoutKey = ""; render(); });
document.getElementById("filter").addEventListener("input", () => { state.layoutKey = ""; render(); });
document.getElementById("map").addEventListener("click", ev => {
  const g = ev.target.closest(".node");
  if (g) location.hash = "#/service/" + encodeURIComponent(g.dataset.service);
});
route();
connect();
