// vski-realtime live console: a browser-side example of the VSKI SDK's realtime frames.
// No build step, no framework. Everything the page does is in window.vskiConsole for tests.
"use strict";

const $ = (id) => document.getElementById(id);
const RECONNECT_MS = 3000; // the SDK's delay

const state = {
  config: null,   // from /api/config: ingest, fanout[], token, db, collection
  ws: null,
  wanted: false,  // user asked to be connected (drives reconnects)
  lastIds: {},    // collection -> last event id seen, as the SDK remembers it
  events: [],     // {collection, id, data}
  frames: [],     // every frame received, parsed
  timer: null,
};
window.vskiConsole = state;

function setStatus(text) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + text;
  $("connect").disabled = text !== "disconnected";
  $("disconnect").disabled = text === "disconnected" && !state.wanted;
}

function addItem(listId, text, cls) {
  const li = document.createElement("li");
  li.textContent = text; // never innerHTML: records are user data
  if (cls) li.className = cls;
  const list = $(listId);
  list.appendChild(li);
  while (list.children.length > 500) list.removeChild(list.firstChild);
  list.scrollTop = list.scrollHeight; // follow new items without scrolling the page
  return li;
}

function collections() {
  return $("collection").value.split(",").map((s) => s.trim()).filter(Boolean);
}

function realtimeUrl() {
  // Exactly what the SDK builds: base URL http->ws, /api/realtime?db=<db>&auth=<token>
  const base = $("node").value;
  const q = new URLSearchParams({ db: $("db").value.trim(), auth: state.config.token });
  return base + "/api/realtime?" + q.toString();
}

function subscribe(ws, collection) {
  const msg = { type: "SUBSCRIBE", collection };
  const lastId = state.lastIds[collection];
  if (lastId) msg.lastId = lastId;
  ws.send(JSON.stringify(msg));
}

function onFrame(frame) {
  state.frames.push(frame);
  addItem("frames", JSON.stringify(frame), frame.type === "ERROR" ? "error" : "");
  if (frame.type === "ERROR" && frame.code === "forbidden") {
    // the access policy refused this user the collection: say so where it is seen
    addItem("refusals", `${frame.collection}: ${frame.message}`, "error");
  }
  if (!Array.isArray(frame.events)) return; // the SDK ignores frames without events[]
  for (const ev of frame.events) {
    state.events.push({ collection: frame.collection, id: ev.id, data: ev.data });
    state.lastIds[frame.collection] = ev.id;
    const li = addItem("events", `${frame.collection}  ${ev.id}  ${JSON.stringify(ev.data)}`);
    li.dataset.id = ev.id;
    li.dataset.collection = frame.collection;
  }
  $("count").textContent = String(state.events.length);
  $("lastId").value = state.lastIds[collections()[0]] || $("lastId").value;
}

async function connect() {
  if (!state.config) return;
  // a token for the user in the field (the access policy decides what that user sees)
  const sub = $("user").value.trim() || "dev";
  const resp = await fetch("/api/config?" + new URLSearchParams({ sub }).toString());
  state.config.token = (await resp.json()).token;
  const resumeFrom = $("lastId").value.trim();
  // the field holds the last id seen (so Connect after Disconnect resumes), or what the user typed
  state.lastIds = {};
  for (const c of collections()) {
    if (resumeFrom) state.lastIds[c] = resumeFrom;
  }
  state.wanted = true;
  open();
}

function open() {
  clearTimeout(state.timer);
  setStatus("connecting");
  const ws = new WebSocket(realtimeUrl());
  state.ws = ws;
  ws.onopen = () => {
    setStatus("connected");
    for (const c of collections()) subscribe(ws, c); // the SDK subscribes everything on open
  };
  ws.onmessage = (msg) => {
    try { onFrame(JSON.parse(msg.data)); } catch (e) { addItem("frames", "bad frame: " + e, "error"); }
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    state.ws = null;
    addItem("frames", `closed: code ${ev.code} ${ev.reason || ""}`, ev.code === 1000 ? "" : "error");
    setStatus("disconnected");
    if (state.wanted && $("reconnect").checked) {
      state.timer = setTimeout(open, RECONNECT_MS); // then re-subscribe with each lastId
    }
  };
}

function disconnect() {
  state.wanted = false;
  clearTimeout(state.timer);
  if (state.ws) state.ws.close(1000, "bye");
  setStatus("disconnected");
}

async function postWebhook() {
  let record;
  try {
    record = JSON.parse($("record").value || "null");
  } catch (e) {
    $("postResult").textContent = "record is not valid JSON: " + e.message;
    return null;
  }
  const id = (record && record.id) || "rec_" + Math.random().toString(16).slice(2, 10);
  if (record && typeof record === "object" && !record.id) record.id = id;
  const body = {
    database: $("db").value.trim(),
    collection: $("postCollection").value.trim(),
    id,
    action: $("action").value,
    timestamp: new Date().toISOString(),
    record: $("action").value === "delete" ? null : record,
  };
  const resp = await fetch("/api/webhook", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const answer = await resp.json();
  $("postResult").textContent = `${resp.status} ${JSON.stringify(answer)}`;
  return answer;
}

async function init() {
  const resp = await fetch("/api/config");
  state.config = await resp.json();
  for (const url of state.config.fanout) {
    const opt = document.createElement("option");
    opt.value = url;
    opt.textContent = url;
    $("node").appendChild(opt);
  }
  const params = new URLSearchParams(location.search);
  $("db").value = params.get("db") || state.config.db;
  $("collection").value = params.get("collection") || state.config.collection;
  $("postCollection").value = collections()[0] || state.config.collection;
  if (params.get("lastId")) $("lastId").value = params.get("lastId");
  if (params.get("user")) $("user").value = params.get("user");
  if (params.get("node")) $("node").selectedIndex = Number(params.get("node")) || 0;
  $("connect").onclick = connect;
  $("disconnect").onclick = disconnect;
  $("clear").onclick = () => {
    state.events = []; $("events").textContent = ""; $("count").textContent = "0";
  };
  $("post").onclick = postWebhook;
  state.ready = true;
  if (params.get("autoconnect") === "1") connect();
}

state.connect = connect;
state.disconnect = disconnect;
state.postWebhook = postWebhook;
init().catch((e) => { $("postResult").textContent = "could not load /api/config: " + e; });
