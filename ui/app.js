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
  const long = String(value).length > 14;
  return el("div", { class: "card", "data-figure": id || label },
    el("div", { class: "label", text: label }), el("div", { class: long ? "value long" : "value", text: value }));
}

// Seconds as a person reads them: 42 s, 7 min, 3.5 h, 2.0 d.
function dur(s) {
  if (s == null) return "—";
  if (s < 120) return `${s.toFixed(0)} s`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
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
  // The slowest role's figure over the last sample's interval (null when nothing completed).
  const worst = (q) => (last.roles || []).reduce((m, r) => (r[q] == null ? m : Math.max(m == null ? 0 : m, r[q])), null);
  out.push(el("div", { class: "cards" },
    card("connections / max", conn ? `${fmt(conn.client_backends)} / ${fmt(conn.settings && conn.settings.max_connections)}` : "—", "connections"),
    card("transactions/s", fmt(last.transactions_per_second), "tps"),
    card("statements/s (capture)", fmt(last.statements_per_second), "qps"),
    card("slowest role p50 (last 10 s)", fmt(worst("p50_ms"), "ms"), "p50"),
    card("slowest role p99 (last 10 s)", fmt(worst("p99_ms"), "ms"), "p99"),
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
  const recent = (role, k) => { const r = last.roles.find((x) => x.role === role); return r ? r[k] : null; };
  const rows = st.roles.map((r) => el("tr", { "data-role": r.role },
    el("td", {}, el("a", { href: `#/role/${encodeURIComponent(r.role)}`, text: r.role })),
    el("td", { class: "num", text: fmt(r.queries) }),
    el("td", { class: "num", text: fmt(recent(r.role, "statements_per_second")) }),
    el("td", { class: "num", text: fmt(r.errors) }),
    el("td", { text: Object.entries(r.errors_by_class).map(([c, n]) => `${c}: ${n}`).join(", ") || "—" }),
    el("td", { class: "num", text: fmt(r.p50_ms, "ms") }),
    el("td", { class: "num", text: fmt(r.p99_ms, "ms") }),
    el("td", { class: "num", text: fmt(recent(r.role, "p99_ms"), "ms") }),
    el("td", { class: "num", text: fmt(r.connections) }),
    el("td", { text: r.databases.join(", ") })));
  const top = (hist.samples || []).length ? last.roles.slice(0, 6).map((r) => r.role) : [];
  const t = (hist.samples || []).map((x) => x.t_ms);
  return [el("h1", { text: "Roles" }),
    el("div", { class: "charts" },
      chart("Statements/s by role", t, top.map((r) => ({ label: r, values: roleSeries(hist, r, "statements_per_second") }))),
      chart("p99 latency by role (each 10 s)", t, top.map((r) => ({ label: r, values: roleSeries(hist, r, "p99_ms") })), "ms")),
    panel("Every role pgmon saw", el("table", { id: "roles" },
      el("thead", {}, el("tr", {}, ["role", "statements", "statements/s", "errors", "errors by SQLSTATE class", "p50 since start", "p99 since start", "p99 last 10 s", "connections", "databases"].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows)),
      source("From pgmon's capture of the wire protocol (every statement each backend completed), as `pgmon-agent status` shows it; statements/s and the last p99 over the history's last 10-second interval, only for the 50 busiest roles."))];
}

// pgmon.audit's newest rows (GET /api/v1/audit), with the SQL that read them.
function auditPanel(title, body) {
  if (body.error) return errorBox(title, body);
  const d = body.data;
  const content = !d.installed
    ? el("p", { class: "muted", text: "pgmon.audit does not exist: pgmon's SQL is not installed (pgmon-agent install-sql)." })
    : d.rows.length ? el("table", { class: "audit" },
      el("thead", {}, el("tr", {}, ["at (UTC)", "role", "source", "step", "utilisation", "action", "result"].map((h) => el("th", { text: h })))),
      el("tbody", {}, d.rows.map((r) => el("tr", {},
        el("td", { text: r.at }),
        el("td", {}, el("a", { href: `#/role/${encodeURIComponent(r.role)}`, text: r.role })),
        el("td", { text: r.source }), el("td", { text: r.step }),
        el("td", { class: "num", text: fmt(r.utilisation, "ratio") }),
        el("td", { text: r.action }), el("td", { text: r.result })))))
      : el("p", { class: "muted", text: "no audit row yet" });
  return panel(title, content, sqlToggle(body.sql));
}

async function rolePage(name) {
  const [st, hist, audit] = await Promise.all([get("/api/v1/status"), get("/api/v1/history"),
    get(`/api/v1/audit?limit=20&role=${encodeURIComponent(name)}`)]);
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
      card("p50 since start", fmt(r.p50_ms, "ms"), "p50"), card("p99 since start", fmt(r.p99_ms, "ms"), "p99"),
      card("budget used", b ? fmt(b.utilisation, "ratio") : "no budget", "budget")),
    el("div", { class: "charts" },
      chart("Statements/s", t, [{ label: "statements/s", values: roleSeries(hist, name, "statements_per_second") }, { label: "errors/s", values: roleSeries(hist, name, "errors_per_second") }]),
      chart("Latency (each 10 s)", t, [{ label: "p50", values: roleSeries(hist, name, "p50_ms") }, { label: "p99", values: roleSeries(hist, name, "p99_ms") }], "ms"),
      chart("Budget utilisation", t, [{ label: "utilisation", values: roleSeries(hist, name, "budget_utilisation") }], "ratio")),
    b ? panel("Budget", render({ tier: b.tier, spend: b.spend, budget: b.budget, unit: b.unit, step: b.step, what_an_unlock_would_do: b.unlock })) : null,
    panel("Errors by SQLSTATE class", render(r.errors_by_class), render({ connection_errors_by_class: r.connection_errors_by_class })),
    panel("Top fingerprints", render(r.fingerprints),
      source("Normalized by libpg_query (constants as $n); calls, errors and mean time from the capture.")),
    auditPanel("Audit trail (pgmon.audit, newest first)", audit)];
}

async function budgets() {
  const [st, hist, audit] = await Promise.all([get("/api/v1/status"), get("/api/v1/history"), get("/api/v1/audit?limit=50")]);
  if (st.error) return [errorBox("Budgets", st)];
  const bs = st.budgets || [];
  const t = (hist.samples || []).map((x) => x.t_ms);
  const top = bs.slice(0, 6).map((b) => b.role);
  return [el("h1", { text: "Budgets" }),
    chart("Budget utilisation", t, top.map((r) => ({ label: r, values: roleSeries(hist, r, "budget_utilisation") })), "ratio"),
    panel("Budgeted roles, highest utilisation first", bs.length ? el("table", { id: "budgets" },
      el("thead", {}, el("tr", {}, ["role", "tier", "spend / budget", "utilisation", "window", "ladder step", "why", "connection limit", "what an unlock would do"].map((h) => el("th", { text: h })))),
      el("tbody", {}, bs.map((b) => el("tr", { "data-role": b.role },
        el("td", {}, el("a", { href: `#/role/${encodeURIComponent(b.role)}`, text: b.role })),
        el("td", { text: b.tier }),
        el("td", { class: "num", text: `${fmt(b.spend)} / ${fmt(b.budget)} ${b.unit}` }),
        el("td", {}, bar(b.utilisation), " ", fmt(b.utilisation, "ratio")),
        el("td", { text: b.reset ? `${b.reset} reset` : `${fmt(b.window_seconds)} s rolling` }),
        el("td", {}, b.step ? el("span", { class: "tag warning", text: b.step }) : "—"),
        el("td", { text: b.step ? `utilisation ≥ ${fmt(b.step_at, "ratio")}` : "under every step" }),
        el("td", { class: "num", text: fmt(b.connection_limit) }),
        el("td", { class: "unlock", text: b.unlock || "—" })))))
      : el("p", { class: "muted", text: "Budgets are off (budgets.enabled: false) or no role is budgeted." }),
      source("Spend is charged by pgmon's capture: each execution's generic-plan cost (the cost worker's EXPLAIN) or its time, over the tier's window. An unlock is `pgmon-agent unlock --budget ROLE` on the database host.")),
    auditPanel("Audit trail (pgmon.audit, newest first)", audit)];
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

// pg_stat_statements and pgmon's capture side by side, ranked three ways.
async function topQueries() {
  const body = await get("/api/v1/top-queries");
  if (body.error) return [el("h1", { text: "Top queries" }), errorBox("/api/v1/top-queries", body)];
  const d = body.data;
  const pss = d.pg_stat_statements;
  const text = (q) => {
    const t = (q.pg_stat_statements && q.pg_stat_statements.query) || (q.pgmon && q.pgmon.normalized) || "";
    return el("code", { title: t, text: t.length > 110 ? t.slice(0, 110) + "…" : t });
  };
  const side = (q, s, k, unit) => fmt(q[s] ? q[s][k] : null, unit);
  const table = (rows, cols) => rows.length ? el("table", { class: "top" },
    el("thead", {}, el("tr", {}, ["statement", "seen by"].concat(cols.map((c) => c[0])).map((h) => el("th", { text: h })))),
    el("tbody", {}, rows.map((q) => el("tr", { "data-fingerprint": q.fingerprint || "" },
      el("td", {}, text(q)), el("td", { text: q.seen_by }),
      cols.map(([, f]) => el("td", { class: "num", text: f(q) }))))))
    : el("p", { class: "muted", text: "none" });
  return [el("h1", { text: "Top queries" }),
    el("div", { class: "cards" },
      card("pg_stat_statements", pss.available ? `${fmt(pss.statements_read)} statements` : "not installed", "pss"),
      card("its counters reset", pss.stats_reset ? pss.stats_reset.replace(/\.\d+/, "") : "—", "stats_reset"),
      card("pgmon's capture", d.pgmon.available ? `${fmt(d.pgmon.fingerprints_read)} fingerprints` : d.pgmon.reason, "pgmon"),
      card("pgmon counting for", d.pgmon.available ? dur(d.pgmon.uptime_seconds) : "—", "uptime")),
    pss.available ? null : el("p", { class: "muted", text: pss.reason }),
    el("div", { class: "tri" },
      panel("By time (ms)", table(d.statements, [
        ["pg_stat_statements", (q) => side(q, "pg_stat_statements", "total_ms")],
        ["pgmon", (q) => side(q, "pgmon", "total_ms")],
        ["mean (pss / pgmon)", (q) => `${side(q, "pg_stat_statements", "mean_ms", "ms")} / ${side(q, "pgmon", "mean_ms", "ms")}`]])),
      panel("By calls", table(d.by_calls, [
        ["pg_stat_statements", (q) => side(q, "pg_stat_statements", "calls")],
        ["pgmon", (q) => side(q, "pgmon", "calls")],
        ["errors (pgmon)", (q) => side(q, "pgmon", "errors")]])),
      panel("By I/O (8 kB blocks)", table(d.by_io, [
        ["read", (q) => side(q, "pg_stat_statements", "shared_blks_read")],
        ["hit", (q) => side(q, "pg_stat_statements", "shared_blks_hit")],
        ["all I/O", (q) => side(q, "pg_stat_statements", "io_blks")]]))),
    panel("Where this comes from", sqlToggle(body.sql),
      source("The two sides meet on libpg_query's fingerprint of each text. pg_stat_statements counts since its reset and sees pgmon's own statements; pgmon counts since the agent started, on the wire (time from request to completion), and has no I/O figures."))];
}

const routes = {
  overview, roles, budgets, quotas, alerts, capture,
  autovacuum: apiPage("Autovacuum", "/api/v1/autovacuum"),
  "top-queries": topQueries,
  storage: apiPage("Storage and indexes", "/api/v1/storage"),
  partitions: apiPage("Partitions", "/api/v1/partitions"),
  replication: apiPage("Replication", "/api/v1/replication"),
};

// Each draw takes a number; a draw whose answers arrive after a newer one started (the
// reader moved on while a slow page was loading) is dropped, so the page shown is always
// the one the address names.
let drawing = 0;

async function show() {
  clearTimeout(timer);
  const mine = ++drawing;
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
  if (mine !== drawing) return;
  // A redraw of the same page keeps the SQL toggles the reader opened.
  const open = document.body.dataset.page === page
    ? [...main.querySelectorAll("details")].map((d) => d.open) : [];
  for (const c of charts) c.destroy();
  charts = [];
  main.replaceChildren(...parts.filter((p) => p != null));
  main.querySelectorAll("details").forEach((d, i) => { if (open[i]) d.open = true; });
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.page = page;
  timer = setTimeout(show, REFRESH_MS);
}

window.addEventListener("hashchange", show);
show();
