// The operations page: polls ingest's admin read API with the admin key and draws it.
// No build step; uPlot (vendored, /admin/assets/uPlot.iife.min.js) draws the charts.
// The key lives in sessionStorage only (gone with the tab) and goes out as a bearer header.
// Everything shown is inserted as text (never as HTML): record data cannot run in the page.
"use strict";

(() => {
  const KEY = "vskiAdminKey";
  const POINTS = 150; // samples kept per chart (5 minutes at a 2 s heartbeat)
  const COLORS = ["#2f6fde", "#d9480f", "#2b8a3e", "#ae3ec9", "#e8590c", "#0b7285", "#c2255c", "#5c940d"];
  const $ = (id) => document.getElementById(id);

  const state = {
    nodes: [],
    status: null,
    collections: [],
    groups: [],
    history: [],
    errors: [],
    polls: 0,
    refused: false,
    // chart samples: x (unix seconds) and per series name -> values aligned with x
    samples: { x: [], webhooks: {}, deliveries: {}, connections: {}, lag: {} },
  };
  window.vskiOps = state;

  // ------------------------------------------------------------------ the key

  function takeKeyFromUrl() {
    const m = /(?:^|[#&])key=([^&]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  function key() { return sessionStorage.getItem(KEY) || ""; }

  function showAuthError(text) {
    const el = $("authError");
    el.textContent = text;
    el.hidden = !text;
  }

  function showApiError(text) {
    const el = $("apiError");
    el.textContent = text;
    el.hidden = !text;
  }

  async function api(path) {
    const k = key();
    if (!k) throw new AuthError("enter the admin key (REALTIME_ADMIN_KEY) to see the deployment");
    const resp = await fetch(path, { headers: { Authorization: "Bearer " + k }, cache: "no-store" });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (resp.status === 401) {
      sessionStorage.removeItem(KEY);
      throw new AuthError("the admin key was refused (401 " + ((body && body.error) || "unauthorized") + "): enter the right key");
    }
    if (!resp.ok) {
      throw new Error(path.split("?")[0] + ": " + resp.status + " " + ((body && body.message) || resp.statusText));
    }
    return body;
  }

  class AuthError extends Error {}

  // ------------------------------------------------------------------ formatting

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function fmtAge(ms) {
    if (ms === null || ms === undefined) return "–";
    const s = ms / 1000;
    if (s < 1) return Math.round(ms) + " ms";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return Math.round(s / 86400) + " d";
  }

  function fmtNum(v, digits) {
    if (v === null || v === undefined) return "–";
    return Number(v).toFixed(digits === undefined ? 0 : digits);
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function badge(tr, text, kind) {
    const td = document.createElement("td");
    const span = document.createElement("span");
    span.className = "badge " + kind;
    span.textContent = text;
    td.appendChild(span);
    tr.appendChild(td);
  }

  function fill(tableId, rows, render) {
    const body = $(tableId).querySelector("tbody");
    const frag = document.createDocumentFragment();
    for (const row of rows) frag.appendChild(render(row));
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell(tr, "nothing to show", "muted");
      td.colSpan = $(tableId).querySelectorAll("thead th").length;
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
  }

  // ------------------------------------------------------------------ charts

  const charts = {};

  function chartSpec(id, name, yLabel) {
    return { id, name, yLabel };
  }

  const CHARTS = [
    chartSpec("chartWebhooks", "webhooks", "webhooks/s"),
    chartSpec("chartDeliveries", "deliveries", "events/s"),
    chartSpec("chartConnections", "connections", "connections"),
    chartSpec("chartLag", "lag", "ms"),
  ];

  function seriesNames(name) {
    return Object.keys(state.samples[name]).sort();
  }

  function drawChart(spec) {
    const el = $(spec.id);
    const names = seriesNames(spec.name);
    const data = [state.samples.x, ...names.map((n) => state.samples[spec.name][n])];
    const key = names.join("|");
    const width = Math.max(280, el.clientWidth || 480);
    let c = charts[spec.id];
    if (c && c.key === key) {
      c.plot.setData(data);
      if (Math.abs(c.width - width) > 4) { c.plot.setSize({ width, height: 180 }); c.width = width; }
      return;
    }
    if (c) c.plot.destroy();
    const opts = {
      width,
      height: 180,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, (max || 0) * 1.15)] } },
      axes: [{}, { label: spec.yLabel, size: 60 }],
      series: [
        {},
        ...names.map((n, i) => ({
          label: n,
          stroke: COLORS[i % COLORS.length],
          width: 2,
          spanGaps: false,
          value: (u, v) => (v === null || v === undefined ? "–" : v.toFixed(spec.name === "connections" ? 0 : 2)),
        })),
      ],
      legend: { show: true },
    };
    charts[spec.id] = { plot: new uPlot(opts, data, el), key, width };
  }

  function record(nodes, now) {
    const s = state.samples;
    s.x.push(now);
    const series = {
      webhooks: {}, deliveries: {}, connections: {}, lag: {},
    };
    let total = 0;
    for (const n of nodes) {
      const label = n.role + " " + n.id;
      if (n.role === "ingest") {
        series.webhooks[label] = n.webhooks_per_s || 0;
        total += n.webhooks_per_s || 0;
      } else {
        series.deliveries[label] = n.events_per_s || 0;
        series.connections[label] = n.connections || 0;
        series.lag[label] = typeof n.read_lag_ms === "number" ? n.read_lag_ms : null;
      }
    }
    series.webhooks["all ingest"] = total;
    for (const name of Object.keys(series)) {
      const known = s[name];
      for (const label of Object.keys(series[name])) {
        if (!known[label]) known[label] = new Array(s.x.length - 1).fill(null);
      }
      for (const label of Object.keys(known)) {
        known[label].push(label in series[name] ? series[name][label] : null);
      }
    }
    if (s.x.length > POINTS) {
      s.x.shift();
      for (const name of ["webhooks", "deliveries", "connections", "lag"]) {
        for (const label of Object.keys(s[name])) {
          s[name][label].shift();
          if (s[name][label].every((v) => v === null)) delete s[name][label]; // node long gone
        }
      }
    }
    for (const spec of CHARTS) drawChart(spec);
  }

  // ------------------------------------------------------------------ tables

  function nodeState(n) {
    if (n.draining) return ["draining", "warn"];
    if (n.stale) return ["stale", "warn"];
    if (n.ready === false) return ["not ready", "error"];
    return ["ok", "ok"];
  }

  function renderNodes(status) {
    const now = status.now;
    $("nodeCount").textContent = "(" + status.totals.fanout + " fanout, " + status.totals.ingest + " ingest" +
      (status.truncated ? ", " + status.registered + " registered: list truncated" : "") + ")";
    fill("nodes", status.nodes, (n) => {
      const tr = document.createElement("tr");
      const [text, kind] = nodeState(n);
      tr.dataset.nodeId = n.id;
      tr.dataset.role = n.role;
      tr.dataset.state = text;
      badge(tr, text, kind);
      cell(tr, n.id, "mono");
      cell(tr, n.role);
      cell(tr, n.address, "mono");
      cell(tr, n.hostname ? n.hostname + " (pid " + n.pid + ")" : null, "mono");
      cell(tr, n.version);
      cell(tr, fmtAge(n.started_at ? (now - n.started_at) * 1000 : null), "num");
      cell(tr, n.role === "fanout" ? fmtNum(n.connections) : "–", "num");
      cell(tr, n.role === "fanout" ? fmtNum(n.subscriptions) : "–", "num");
      cell(tr, n.role === "fanout" ? fmtNum(n.events_per_s, 1) : "–", "num");
      cell(tr, n.role === "ingest" ? fmtNum(n.webhooks_per_s, 1) : "–", "num");
      cell(tr, n.role === "fanout" ? fmtNum(n.read_lag_ms, 2) : "–", "num");
      cell(tr, fmtBytes(n.rss_bytes), "num");
      cell(tr, fmtAge(n.age_ms) + " ago", "num");
      return tr;
    });
    const t = status.totals;
    $("summary").textContent = t.fanout + " fanout · " + t.ingest + " ingest · " + t.connections +
      " connections · " + fmtNum(t.webhooks_per_s, 1) + " webhooks/s · " + fmtNum(t.events_per_s, 1) +
      " deliveries/s · updated " + new Date(now * 1000).toLocaleTimeString();
  }

  function renderCollections(body) {
    fill("collections", body.collections, (c) => {
      const tr = document.createElement("tr");
      tr.dataset.database = c.database;
      tr.dataset.collection = c.collection;
      tr.className = "clickable";
      tr.title = "show its history";
      cell(tr, c.database);
      cell(tr, c.collection);
      cell(tr, c.events_per_s === null ? "–" : fmtNum(c.events_per_s, 2), "num");
      cell(tr, fmtNum(c.retained), "num");
      cell(tr, c.first_id, "mono");
      cell(tr, c.last_id, "mono");
      cell(tr, fmtAge(c.newest_age_ms) + (c.newest_age_ms === null ? "" : " ago"), "num");
      cell(tr, fmtBytes(c.memory_bytes), "num");
      cell(tr, fmtNum(c.groups), "num");
      tr.addEventListener("click", () => {
        $("historyDb").value = c.database;
        $("historyCollection").value = c.collection;
        $("historyAfter").value = "";
        loadHistory(true);
      });
      return tr;
    });
  }

  function renderGroups(body) {
    $("visibility").textContent = body.visibility_seconds + " s";
    const rows = $("onlyStuck").checked ? body.groups.filter((g) => g.stuck) : body.groups;
    fill("groups", rows, (g) => {
      const tr = document.createElement("tr");
      tr.dataset.group = g.group;
      tr.dataset.redisGroup = g.redis_group;
      tr.dataset.collection = g.collection;
      tr.dataset.stuck = g.stuck ? "1" : "0";
      badge(tr, g.stuck ? "stuck" : (g.pending ? "pending" : "ok"), g.stuck ? "error" : (g.pending ? "warn" : "ok"));
      cell(tr, g.database);
      cell(tr, g.collection);
      cell(tr, g.group);
      cell(tr, g.redis_group === g.group ? "(same)" : g.redis_group, "mono");
      cell(tr, fmtNum(g.consumers), "num");
      cell(tr, fmtNum(g.pending), "num");
      cell(tr, fmtAge(g.oldest_pending_age_ms), "num");
      cell(tr, fmtAge(g.oldest_pending_idle_ms), "num");
      cell(tr, fmtNum(g.oldest_pending_deliveries), "num");
      cell(tr, g.members.map((m) => (m.node || m.consumer) + ": " + m.pending).join(", ") || "none", "mono");
      return tr;
    });
  }

  // ------------------------------------------------------------------ history

  let historyNext = null;

  async function loadHistory(newest, after) {
    const db = $("historyDb").value.trim() || "postgres";
    const coll = $("historyCollection").value.trim();
    if (!coll) { $("historyInfo").textContent = "name a collection"; return; }
    const params = new URLSearchParams({ database: db, collection: coll, limit: $("historyLimit").value || "50" });
    if (newest) {
      params.set("newest", "1");
      if (after) params.set("before", after);
    } else {
      const from = after !== undefined ? after : $("historyAfter").value.trim();
      if (from) params.set("after", from);
    }
    try {
      const body = await api("/admin/history?" + params.toString());
      state.history = body.events;
      historyNext = { newest, id: newest ? body.next_before : body.next_after };
      $("historyNext").disabled = !historyNext.id;
      $("historyInfo").textContent = body.events.length + " events of " + db + "/" + coll +
        " (" + (newest ? "newest first" : "oldest first") + (body.epoch ? ", epoch " + body.epoch : "") + ")" +
        (body.epoch_changed ? ": the id was of an earlier epoch, shown from the start" : "");
      fill("history", body.events, (e) => {
        const tr = document.createElement("tr");
        tr.dataset.eventId = e.id;
        cell(tr, e.id, "mono");
        cell(tr, e.data && e.data.action);
        const rec = JSON.stringify(e.data ? e.data.record : null);
        cell(tr, rec.length > 400 ? rec.slice(0, 400) + "…" : rec, "mono record");
        return tr;
      });
    } catch (err) {
      handle(err);
    }
  }

  // ------------------------------------------------------------------ polling

  function handle(err) {
    if (err instanceof AuthError) {
      state.refused = true;
      showAuthError(err.message);
      $("key").focus();
      return;
    }
    state.errors.push(String(err.message || err));
    showApiError(String(err.message || err));
  }

  async function pollStatus() {
    try {
      const status = await api("/admin/status");
      state.status = status;
      state.nodes = status.nodes;
      state.refused = false;
      state.polls += 1;
      showAuthError("");
      showApiError("");
      renderNodes(status);
      record(status.nodes, status.now);
    } catch (err) {
      handle(err);
    }
  }

  async function pollTables() {
    try {
      const db = $("collectionsDb").value.trim();
      const colls = await api("/admin/collections?limit=20" + (db ? "&database=" + encodeURIComponent(db) : ""));
      state.collections = colls.collections;
      renderCollections(colls);
      const groups = await api("/admin/groups?limit=100");
      state.groups = groups.groups;
      renderGroups(groups);
    } catch (err) {
      handle(err);
    }
  }

  function heartbeatMs() {
    const beats = state.nodes.map((n) => n.heartbeat_s).filter((s) => typeof s === "number" && s > 0);
    return Math.max(500, Math.min(10000, (beats.length ? Math.min(...beats) : 2) * 1000));
  }

  let timers = [];
  function start() {
    for (const t of timers) clearTimeout(t);
    timers = [];
    state.refused = false;
    showAuthError("");
    const status = async () => { await pollStatus(); if (!state.refused) timers.push(setTimeout(status, heartbeatMs())); };
    const tables = async () => { await pollTables(); if (!state.refused) timers.push(setTimeout(tables, 5000)); };
    status();
    tables();
  }

  // ------------------------------------------------------------------ wiring

  takeKeyFromUrl();
  $("keyForm").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const k = $("key").value.trim();
    if (k) sessionStorage.setItem(KEY, k);
    $("key").value = "";
    start();
  });
  $("forgetKey").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    for (const t of timers) clearTimeout(t);
    showAuthError("key forgotten: enter it again to continue");
  });
  $("historyForm").addEventListener("submit", (ev) => { ev.preventDefault(); loadHistory(false); });
  $("historyNewest").addEventListener("click", () => loadHistory(true));
  $("historyNext").addEventListener("click", () => { if (historyNext && historyNext.id) loadHistory(historyNext.newest, historyNext.id); });
  $("onlyStuck").addEventListener("change", () => pollTables());
  $("collectionsForm").addEventListener("submit", (ev) => { ev.preventDefault(); pollTables(); });
  window.addEventListener("resize", () => { for (const spec of CHARTS) drawChart(spec); });
  const params = new URLSearchParams(location.search);
  if (params.get("collection")) {
    $("historyCollection").value = params.get("collection");
    if (params.get("database")) $("historyDb").value = params.get("database");
  }
  if (key()) start(); else showAuthError("enter the admin key (REALTIME_ADMIN_KEY) to see the deployment");
})();
