// pgmon's web UI: one page per hash route (#/overview, #/roles, #/role/NAME, …), drawn in
// the browser from the agent's own JSON (/api/v1/*). Every panel built from SQL carries a
// "SQL" toggle with the statements of the API's `sql` envelope; panels built from pgmon's
// capture say where their numbers come from instead. The page redraws every 10 s.
"use strict";

const REFRESH_MS = 10000;
const main = document.getElementById("main");
let timer = null;
let charts = [];

// ---- small helpers -------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c == null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function get(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  const text = await r.text();
  let body;
  try { body = JSON.parse(text); } catch (_) { body = { error: text.trim() }; }
  if (!r.ok && !body.error) body.error = `${r.status} ${r.statusText}`;
  return body;
}

function fmt(v, unit) {
  if (v == null) return "—";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v !== "number") return String(v);
  if (Object.is(v, -0)) v = 0;
  if (unit === "bytes") {
    const u = ["B", "kB", "MB", "GB", "TB"];
    let i = 0; let x = v;
    while (Math.abs(x) >= 1000 && i < u.length - 1) { x /= 1000; i++; }
    return `${x.toFixed(i ? 1 : 0)} ${u[i]}`;
  }
  if (unit === "ratio") return `${(v * 100).toFixed(Math.abs(v) >= 1 ? 0 : 1)} %`;
  if (unit === "ms") return `${v.toFixed(v < 10 ? 2 : 0)} ms`;
  if (Number.isInteger(v)) return v.toLocaleString("en");
  return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2);
}

function unitOf(key) {
  if (/bytes$/.test(key)) return "bytes";
  if (/ratio$|utilisation$/.test(key)) return "ratio";
  if (/_ms$/.test(key)) return "ms";
  return null;
}

function card(label, value, id) {
  return el("div", { class: "card", "data-figure": id || label },
    el("div", { class: "label", text: label }), el("div", { class: "value", text: value }));
}

function panel(title, ...body) {
  return el("section", { class: "panel" }, el("h2", { text: title }), ...body);
}

// The statements behind an answer, collapsed.
function sqlToggle(runs) {
  if (!runs || !runs.length) return null;
  return el("details", { class: "sql" }, el("summary", { text: `SQL (${runs.length})` }),
    runs.map((r) => el("div", {},
      el("div", { class: "muted", text: `${r.name} — run by ${r.by}${r.database ? " in " + r.database : ""}` }),
      el("pre", { text: r.text }))));
}

// Where a capture figure comes from (no SQL behind it).
function source(text) {
  return el("p", { class: "muted source", text });
}

// Any JSON value as tables: arrays of objects become tables, objects key/value rows.
function render(v, key) {
  if (v == null || typeof v !== "object") return document.createTextNode(fmt(v, unitOf(key || "")));
  if (Array.isArray(v)) {
    if (!v.length) return el("span", { class: "muted", text: "none" });
    if (v.every((x) => x && typeof x === "object" && !Array.isArray(x))) {
      const cols = [...new Set(v.flatMap((x) => Object.keys(x)))];
      return el("table", {},
        el("thead", {}, el("tr", {}, cols.map((c) => el("th", { text: c })))),
        el("tbody", {}, v.map((row) => el("tr", {}, cols.map((c) => {
          const x = row[c];
          return el("td", { class: typeof x === "number" ? "num" : "" }, render(x, c));
        })))));
    }
    return document.createTextNode(v.map((x) => fmt(x)).join(", "));
  }
  const keys = Object.keys(v);
  if (!keys.length) return el("span", { class: "muted", text: "none" });
  return el("table", { class: "kv" }, el("tbody", {}, keys.map((k) =>
    el("tr", {}, el("th", { text: k }), el("td", {}, render(v[k], k))))));
}

function bar(ratio) {
  const r = Math.max(0, Math.min(1, ratio || 0));
  const cls = ratio >= 1 ? "bar crit" : ratio >= 0.8 ? "bar warn" : "bar";
  return el("span", { class: cls, title: fmt(ratio, "ratio") },
    el("span", { style: `width:${(r * 100).toFixed(1)}%` }));
}

// A time series chart (uPlot) of `series` [{label, values}] over `t` (ms).
function chart(title, t, series, unit) {
  const box = el("div", { class: "panel chart" }, el("h2", { text: title }));
  if (!t.length) {
    box.append(el("p", { class: "muted", text: "no samples yet (one every 10 s)" }));
    return box;
  }
  const colors = ["#2f6fdb", "#c53030", "#2f855a", "#b7791f", "#6b46c1", "#0987a0"];
  const opts = {
    width: 400, height: 180,
    series: [{}].concat(series.map((s, i) => ({
      label: s.label, stroke: colors[i % colors.length], width: 1.5,
      value: (_, v) => fmt(v, unit),
    }))),
    axes: [{}, { values: (_, ticks) => ticks.map((v) => fmt(v, unit)), size: 90 }],
  };
  requestAnimationFrame(() => {
    opts.width = Math.max(300, box.clientWidth - 24);
    charts.push(new uPlot(opts, [t.map((x) => x / 1000)].concat(series.map((s) => s.values)), box));
  });
  return box;
}

function errorBox(what, body) {
  return panel(what, el("p", { class: "error", text: body.error || "no answer" }));
}

// ---- pages ---------------------------------------------------------------------------

async function overview() {
  const [ov, st, hist, al] = await Promise.all([
    get("/api/v1/overview"), get("/api/v1/status"), get("/api/v1/history"), get("/api/v1/alerts")]);
  const out = [el("h1", { text: "Overview" })];
  const last = (hist.samples || []).slice(-1)[0] || {};
  const conn = ov.data ? ov.data.connections : null;
  const roles = st.roles || [];
  const p = (q) => roles.reduce((m, r) => Math.max(m, r[q] || 0), 0);
  out.push(el("div", { class: "cards" },
    card("connections / max", conn ? `${fmt(conn.client_backends)} / ${fmt(conn.settings && conn.settings.max_connections)}` : "—", "connections"),
    card("transactions/s", fmt(last.transactions_per_second), "tps"),
    card("statements/s (capture)", fmt(last.statements_per_second), "qps"),
    card("worst role p50 (since start)", roles.length ? fmt(p("p50_ms"), "ms") : "—", "p50"),
    card("worst role p99 (since start)", roles.length ? fmt(p("p99_ms"), "ms") : "—", "p99"),
    card("WAL/s", fmt(last.wal_bytes_per_second, "bytes"), "wal"),
    card("checkpoints (timed + requested)", fmt(checkpoints(ov.data && ov.data.checkpoints)), "checkpoints"),
    card("alerts firing", al.data ? fmt(al.data.firing.length) : "—", "alerts")));
  out.push(historyCharts(hist));
  if (ov.error) out.push(errorBox("Cluster", ov));
  else {
    out.push(panel("Connections", render(conn), sqlToggle(ov.sql)));
    out.push(panel("Locks", render(ov.data.locks)));
    out.push(panel("Checkpoints and WAL", render({ checkpoints: ov.data.checkpoints, wal: ov.data.wal })));
    out.push(panel("Health loops", render(ov.data.health_loops)));
  }
  return out;
}

// Checkpoints since the statistics reset: timed + requested (pg_stat_checkpointer on 17+,
// pg_stat_bgwriter before; the API names them the same on every version).
function checkpoints(c) {
  if (!c || (c.timed == null && c.requested == null)) return null;
  return (c.timed || 0) + (c.requested || 0);
}

function historyCharts(hist) {
  const s = hist.samples || [];
  const t = s.map((x) => x.t_ms);
  const pick = (k) => s.map((x) => x[k]);
  return el("div", { class: "charts" },
    chart("Connections", t, [{ label: "connections", values: pick("connections") }, { label: "max", values: pick("max_connections") }]),
    chart("Transactions/s", t, [{ label: "TPS", values: pick("transactions_per_second") }]),
    chart("Statements/s (capture)", t, [{ label: "statements/s", values: pick("statements_per_second") }]),
    chart("WAL rate", t, [{ label: "WAL/s", values: pick("wal_bytes_per_second") }], "bytes"));
}

function roleSeries(hist, role, key) {
  return (hist.samples || []).map((x) => {
    const r = x.roles.find((y) => y.role === role);
    return r ? r[key] : null;
  });
}

async function roles() {
  const [st, hist] = await Promise.all([get("/api/v1/status"), get("/api/v1/history")]);
  if (st.error) return [errorBox("Roles", st)];
  const last = (hist.samples || []).slice(-1)[0] || { roles: [] };
  const rate = (role) => { const r = last.roles.find((x) => x.role === role); return r ? r.statements_per_second : null; };
  const rows = st.roles.map((r) => el("tr", { "data-role": r.role },
    el("td", {}, el("a", { href: `#/role/${encodeURIComponent(r.role)}`, text: r.role })),
    el("td", { class: "num", text: fmt(r.queries) }),
    el("td", { class: "num", text: fmt(rate(r.role)) }),
    el("td", { class: "num", text: fmt(r.errors) }),
    el("td", { text: Object.entries(r.errors_by_class).map(([c, n]) => `${c}: ${n}`).join(", ") || "—" }),
    el("td", { class: "num", text: fmt(r.p50_ms, "ms") }),
    el("td", { class: "num", text: fmt(r.p99_ms, "ms") }),
    el("td", { class: "num", text: fmt(r.connections) }),
    el("td", { text: r.databases.join(", ") })));
  const top = (hist.samples || []).length ? last.roles.slice(0, 6).map((r) => r.role) : [];
  const t = (hist.samples || []).map((x) => x.t_ms);
  return [el("h1", { text: "Roles" }),
    el("div", { class: "charts" },
      chart("Statements/s by role", t, top.map((r) => ({ label: r, values: roleSeries(hist, r, "statements_per_second") }))),
      chart("p99 latency by role (since start)", t, top.map((r) => ({ label: r, values: roleSeries(hist, r, "p99_ms") })), "ms")),
    panel("Every role pgmon saw", el("table", { id: "roles" },
      el("thead", {}, el("tr", {}, ["role", "statements", "statements/s", "errors", "errors by SQLSTATE class", "p50", "p99", "connections", "databases"].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows)),
      source("From pgmon's capture of the wire protocol (every statement each backend completed), as `pgmon-agent status` shows it; statements/s over the last 10 s."))];
}

async function rolePage(name) {
  const [st, hist] = await Promise.all([get("/api/v1/status"), get("/api/v1/history")]);
  if (st.error) return [errorBox(name, st)];
  const r = st.roles.find((x) => x.role === name);
  if (!r) return [el("h1", { text: name }), el("p", { class: "muted", text: "pgmon has not seen this role." })];
  const b = (st.budgets || []).find((x) => x.role === name);
  const t = (hist.samples || []).map((x) => x.t_ms);
  return [el("h1", { text: `Role ${name}` }),
    el("div", { class: "cards" },
      card("statements", fmt(r.queries), "queries"), card("errors", fmt(r.errors), "errors"),
      card("connection errors", fmt(r.connection_errors), "connection_errors"),
      card("connections", fmt(r.connections), "connections"),
      card("p50", fmt(r.p50_ms, "ms"), "p50"), card("p99", fmt(r.p99_ms, "ms"), "p99"),
      card("budget used", b ? fmt(b.utilisation, "ratio") : "no budget", "budget")),
    el("div", { class: "charts" },
      chart("Statements/s", t, [{ label: "statements/s", values: roleSeries(hist, name, "statements_per_second") }, { label: "errors/s", values: roleSeries(hist, name, "errors_per_second") }]),
      chart("Budget utilisation", t, [{ label: "utilisation", values: roleSeries(hist, name, "budget_utilisation") }], "ratio")),
    panel("Errors by SQLSTATE class", render(r.errors_by_class), render({ connection_errors_by_class: r.connection_errors_by_class })),
    panel("Top fingerprints", render(r.fingerprints),
      source("Normalized by libpg_query (constants as $n); calls, errors and mean time from the capture."))];
}

async function budgets() {
  const [st, hist] = await Promise.all([get("/api/v1/status"), get("/api/v1/history")]);
  if (st.error) return [errorBox("Budgets", st)];
  const bs = st.budgets || [];
  const t = (hist.samples || []).map((x) => x.t_ms);
  const top = bs.slice(0, 6).map((b) => b.role);
  return [el("h1", { text: "Budgets" }),
    chart("Budget utilisation", t, top.map((r) => ({ label: r, values: roleSeries(hist, r, "budget_utilisation") })), "ratio"),
    panel("Budgeted roles, highest utilisation first", bs.length ? el("table", { id: "budgets" },
      el("thead", {}, el("tr", {}, ["role", "tier", "spend / budget", "utilisation", "window", "ladder step", "why", "connection limit"].map((h) => el("th", { text: h })))),
      el("tbody", {}, bs.map((b) => el("tr", { "data-role": b.role },
        el("td", {}, el("a", { href: `#/role/${encodeURIComponent(b.role)}`, text: b.role })),
        el("td", { text: b.tier }),
        el("td", { class: "num", text: `${fmt(b.spend)} / ${fmt(b.budget)} ${b.unit}` }),
        el("td", {}, bar(b.utilisation), " ", fmt(b.utilisation, "ratio")),
        el("td", { text: b.reset ? `${b.reset} reset` : `${fmt(b.window_seconds)} s rolling` }),
        el("td", {}, b.step ? el("span", { class: "tag warning", text: b.step }) : "—"),
        el("td", { text: b.step ? `utilisation ≥ ${fmt(b.step_at, "ratio")}` : "under every step" }),
        el("td", { class: "num", text: fmt(b.connection_limit) })))))
      : el("p", { class: "muted", text: "Budgets are off (budgets.enabled: false) or no role is budgeted." }),
      source("Spend is charged by pgmon's capture: each execution's generic-plan cost (the cost worker's EXPLAIN) or its time, over the tier's window."))];
}

async function quotas() {
  const st = await get("/api/v1/status");
  if (st.error) return [errorBox("Storage quotas", st)];
  if (!st.storage) return [el("h1", { text: "Storage quotas" }), el("p", { class: "muted", text: "Storage quotas are off (storage.enabled: false)." })];
  const s = st.storage;
  return [el("h1", { text: "Storage quotas" }),
    el("div", { class: "cards" },
      card("last full recount", fmt(s.last_recount_seconds) + " s", "recount"),
      card("recounted", s.last_recount_age_seconds == null ? "—" : `${fmt(s.last_recount_age_seconds)} s ago`, "recount_age"),
      card("mode", s.dry_run ? "dry run" : "enforcing", "mode")),
    panel("Roles", el("table", { id: "quotas" },
      el("thead", {}, el("tr", {}, ["role", "usage", "soft", "hard", "of hard", "state", "for", "grace left", "locked"].map((h) => el("th", { text: h })))),
      el("tbody", {}, s.roles.map((r) => el("tr", { "data-role": r.role },
        el("td", { text: r.role }),
        el("td", { class: "num", text: fmt(r.usage_bytes, "bytes") }),
        el("td", { class: "num", text: fmt(r.soft_limit_bytes, "bytes") }),
        el("td", { class: "num", text: fmt(r.hard_limit_bytes, "bytes") }),
        el("td", {}, r.usage_bytes != null && r.hard_limit_bytes ? bar(r.usage_bytes / r.hard_limit_bytes) : "—"),
        el("td", {}, el("span", { class: `tag ${r.state}`, text: r.state })),
        el("td", { class: "num", text: `${fmt(r.state_seconds)} s` }),
        el("td", { class: "num", text: r.time_left_seconds == null ? "—" : `${fmt(r.time_left_seconds)} s` }),
        el("td", { text: r.manual_unlock ? "unlocked by hand" : r.state === "locked" ? "yes" : "no" }))))),
      source("Usage counted by the storage coordinator (pg_class sizes of the relations each role owns, in every database).")),
    panel("Databases", render(s.databases))];
}

// A read-API page: its data rendered as tables, its SQL beside it.
function apiPage(title, path) {
  return async () => {
    const body = await get(path);
    if (body.error) return [el("h1", { text: title }), errorBox(path, body)];
    const parts = Object.entries(body.data || {}).map(([k, v]) => panel(k.replace(/_/g, " "), render(v, k)));
    return [el("h1", { text: title }),
      el("p", { class: "muted", text: `${path}${body.database ? " — database " + body.database : ""}, answered in ${fmt(body.elapsed_ms, "ms")}` }),
      panel("Where this comes from", sqlToggle(body.sql)), ...parts];
  };
}

async function alerts() {
  const body = await get("/api/v1/alerts");
  if (body.error) return [errorBox("Alerts", body)];
  const v = body.data;
  const list = (xs) => xs.length ? render(xs) : el("p", { class: "muted", text: "none" });
  return [el("h1", { text: "Alerts" }),
    el("div", { class: "cards" }, card("firing", fmt(v.firing.length), "firing"), card("pending", fmt(v.pending.length), "pending"),
      card("evaluated", v.evaluated_at || "—", "evaluated"), card("notifiers", v.notifiers.join(", ") || "none", "notifiers")),
    panel("Firing", list(v.firing)), panel("Pending", list(v.pending)),
    panel("History", list(v.history)),
    panel("Rules", render(v.rules), sqlToggle(body.sql))];
}

async function capture() {
  const st = await get("/api/v1/status");
  if (st.error) return [errorBox("Capture health", st)];
  const c = st.capture;
  return [el("h1", { text: "Capture health" }),
    el("div", { class: "cards" },
      card("hook", c.hook, "hook"), card("records", fmt(c.events), "events"),
      card("dropped", fmt(c.dropped), "dropped"), card("truncated", fmt(c.truncated), "truncated"),
      card("desyncs", fmt(c.desyncs_frontend + c.desyncs_backend), "desyncs"),
      card("unattributed", fmt(c.unattributed_queries), "unattributed"),
      card("encrypted sessions (readable)", `${fmt(c.encrypted_sessions)} (${fmt(c.encrypted_sessions_readable)})`, "encrypted")),
    panel("Everything the capture counts", render(c),
      source("The kernel's per-CPU counters (records, drops, truncations) and the wire parser's own (desyncs, unattributed statements); nothing here comes from SQL.")),
    panel("Agent", render(st.agent)), panel("Cluster", render(st.cluster))];
}

const routes = {
  overview, roles, budgets, quotas, alerts, capture,
  autovacuum: apiPage("Autovacuum", "/api/v1/autovacuum"),
  "top-queries": apiPage("Top queries (pg_stat_statements)", "/api/v1/top-queries"),
  storage: apiPage("Storage and indexes", "/api/v1/storage"),
  partitions: apiPage("Partitions", "/api/v1/partitions"),
  replication: apiPage("Replication", "/api/v1/replication"),
};

async function show() {
  clearTimeout(timer);
  const hash = location.hash.replace(/^#\/?/, "") || "overview";
  const [page, ...rest] = hash.split("/");
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === `#/${page}` || (page === "role" && a.getAttribute("href") === "#/roles"));
  }
  let parts;
  try {
    parts = page === "role" ? await rolePage(decodeURIComponent(rest.join("/"))) : await (routes[page] || overview)();
  } catch (e) {
    parts = [panel("Error", el("p", { class: "error", text: String(e) }))];
  }
  // A redraw of the same page keeps the SQL toggles the reader opened.
  const open = document.body.dataset.page === page
    ? [...main.querySelectorAll("details")].map((d) => d.open) : [];
  for (const c of charts) c.destroy();
  charts = [];
  main.replaceChildren(...parts);
  main.querySelectorAll("details").forEach((d, i) => { if (open[i]) d.open = true; });
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.page = page;
  timer = setTimeout(show, REFRESH_MS);
}

window.addEventListener("hashchange", show);
show();
