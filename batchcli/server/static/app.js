// The batchcli dashboard: plain JavaScript, no build step, no outside resources.
"use strict";

const API = "/api/v1";
const $ = (sel, root = document) => root.querySelector(sel);
const state = { sse: null, ws: null, timers: [], batch: null, page: 0, perPage: 50, gen: 0 };

// Each view belongs to one route; work that ends after the user moved on is dropped.
class Stale extends Error {}
function current(gen) { if (gen !== state.gen) throw new Stale(); }

// --- the token (asked once, kept for the browser session) -----------------------------------
function token() { return sessionStorage.getItem("batchcli-token") || ""; }

function askToken() {
  return new Promise((resolve) => {
    const dlg = $("#token-dialog");
    $("#token-input").value = "";
    dlg.addEventListener("close", () => {
      const t = $("#token-input").value.trim();
      if (t) sessionStorage.setItem("batchcli-token", t);
      resolve(t);
    }, { once: true });
    dlg.showModal();
  });
}

function withToken(url) {
  const t = token();
  if (!t) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(t);
}

async function api(path, opts = {}) {
  for (let tries = 0; tries < 3; tries++) {
    const headers = Object.assign({}, opts.headers || {});
    if (token()) headers["Authorization"] = "Bearer " + token();
    const resp = await fetch(API + path, Object.assign({}, opts, { headers }));
    if (resp.status === 401) { await askToken(); restartLive(); continue; }
    const body = (resp.headers.get("content-type") || "").includes("json") ? await resp.json() : null;
    if (!resp.ok) throw Object.assign(new Error((body && body.error) || resp.statusText), { status: resp.status });
    return body;
  }
  throw new Error("no valid token");
}

// --- formatting ------------------------------------------------------------------------------
function fmtRate(r) { return r ? r.toFixed(1) + "/s" : "-"; }
function fmtSecs(s) {
  if (s === null || s === undefined) return "-";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(sec).padStart(2, "0");
}
function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function setBar(bar, s) {
  const pct = s.total ? (s.completed + s.failed) / s.total * 100 : 100;
  const fill = $(".fill", bar);
  fill.style.width = pct.toFixed(1) + "%";
  fill.className = "fill " + s.status;
  bar.dataset.percent = pct.toFixed(1);
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuenow", pct.toFixed(1));
}
function setBadge(b, status) { b.textContent = status; b.className = "badge " + status; }

// --- live updates ------------------------------------------------------------------------------
function stopLive() {
  if (state.sse) { state.sse.close(); state.sse = null; }
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
  state.timers.forEach(clearInterval);
  state.timers = [];
  $("#conn").classList.remove("live");
}
let restartLive = () => {};

function listen(onEvent) {
  const es = new EventSource(withToken(API + "/events?types=started,progress,paused,finished,removed"));
  es.onopen = () => $("#conn").classList.add("live");
  es.onerror = () => $("#conn").classList.remove("live");
  es.onmessage = (m) => onEvent(JSON.parse(m.data));
  state.sse = es;
}

// One batch's events. A finished batch closes the stream: it is opened again in a while, in case
// the batch is resumed; so is one the server dropped (a restart). A batch that is gone or
// damaged (its journal or manifest lost or unreadable: the handshake is refused, and a browser
// does not say why) is asked about over HTTP first: `onGone(status, message)` says why, once,
// and the stream is not opened again.
function follow(id, onEvent, onGone) {
  const proto = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(withToken(proto + location.host + API + "/batches/" + encodeURIComponent(id) + "/events"));
  ws.onopen = () => $("#conn").classList.add("live");
  ws.onmessage = (m) => onEvent(JSON.parse(m.data));
  ws.onclose = async () => {
    $("#conn").classList.remove("live");
    state.ws = null;
    try {
      const s = await api("/batches/" + encodeURIComponent(id));
      if (s.status === "damaged") return onGone(s, null);
    } catch (e) {
      if (e.status >= 400 && e.status < 500) return onGone(null, e.message);  // removed (404), or refused
    }  // else the server is away for now: try again in a while
    state.timers.push(setTimeout(() => { if (state.batch === id && !state.ws) follow(id, onEvent, onGone); }, 3000));
  };
  state.ws = ws;
}

// --- the list ----------------------------------------------------------------------------------
async function showList(gen) {
  const view = $("#view");
  view.replaceChildren($("#tpl-list").content.cloneNode(true));
  const filter = $("#list-filter");
  const cards = new Map();

  function card(s) {
    let c = cards.get(s.batch_id);
    if (!c) {
      c = $("#tpl-card").content.firstElementChild.cloneNode(true);
      c.id = "batch-" + s.batch_id;
      c.href = "#/batch/" + encodeURIComponent(s.batch_id);
      cards.set(s.batch_id, c);
    }
    if (s.name !== undefined) $(".b-name", c).textContent = s.name || s.batch_id;
    setBadge($(".b-status", c), s.status);
    setBar($(".bar", c), s);
    $(".b-done", c).textContent = `${s.completed + s.failed} / ${s.total}`;
    $(".b-rate", c).textContent = s.status === "running" ? `${fmtRate(s.rate)} · ETA ${fmtSecs(s.eta_s)}` : "";
    $(".b-fail", c).textContent = s.failed ? `${s.failed} failed` : "";
    return c;
  }

  async function load() {
    const q = filter.value ? "&status=" + filter.value : "";
    const data = await api("/batches?limit=200" + q);
    current(gen);
    const box = $("#batches");
    box.replaceChildren(...data.batches.map(card));
    $("#empty").hidden = data.batches.length > 0;
  }

  filter.onchange = load;
  restartLive = () => { stopLive(); listen(onEvent); };
  function onEvent(ev) {
    if (ev.type === "removed") { const c = cards.get(ev.batch_id); if (c) c.remove(); return; }
    if (!cards.has(ev.batch_id)) { load(); return; }
    if (ev.type === "progress" || ev.type === "paused" || ev.type === "finished") {
      const c = cards.get(ev.batch_id);
      const old = $(".b-name", c).textContent;
      card(Object.assign({ name: old }, ev));
    }
  }
  listen(onEvent);
  await load();
}

// --- one batch ---------------------------------------------------------------------------------
async function showBatch(id, gen) {
  const view = $("#view");
  view.replaceChildren($("#tpl-batch").content.cloneNode(true));
  state.batch = id;
  state.page = 0;
  let itemsDirty = false;
  const enc = encodeURIComponent(id);

  function render(s) {
    $("#b-title").textContent = s.name || s.batch_id;
    setBadge($("#status"), s.status);
    setBar($("#b-bar"), s);
    $("#s-done").textContent = `${s.completed + s.failed} / ${s.total} (${(s.progress_percent ?? 0).toFixed(1)}%)`;
    $("#s-completed").textContent = s.completed;
    $("#s-failed").textContent = s.failed;
    $("#s-remaining").textContent = s.remaining;
    $("#s-rate").textContent = fmtRate(s.rate);
    $("#s-eta").textContent = s.status === "running" ? fmtSecs(s.eta_s) : "-";
    if (s.pipeline !== undefined) $("#b-pipeline").textContent = s.pipeline || "";
    const reason = $("#b-reason");
    reason.hidden = !s.reason;
    reason.textContent = s.reason || "";
    reason.className = ["failed", "interrupted", "damaged"].includes(s.status) ? "reason" : "msg";
    $("#btn-pause").disabled = !["running", "pending"].includes(s.status);
    $("#btn-resume").disabled = !["paused", "interrupted", "failed"].includes(s.status);
    $("#btn-cancel").disabled = ["completed", "cancelled"].includes(s.status);
    if (s.top_failures) {
      $("#failures").hidden = s.top_failures.length === 0;
      $("#failure-list").replaceChildren(...s.top_failures.map((f) => el("li", {}, `${f.count} × ${f.reason}`)));
    }
  }

  async function refresh() {
    const s = await api("/batches/" + enc);
    current(gen);
    render(s);
    return s;
  }

  function thumb(i) {
    const b = el("button", { "data-i": i, title: "item " + i });
    const img = el("img", { loading: "lazy", alt: "item " + i, src: withToken(`${API}/batches/${enc}/items/${i}/thumbnail`) });
    b.append(img);
    b.onclick = () => compare(i);
    return b;
  }

  function compare(i) {
    $("#compare-title").textContent = "Item " + i;
    $("#compare-before").src = withToken(`${API}/batches/${enc}/items/${i}/thumbnail?side=input`);
    $("#compare-after").src = withToken(`${API}/batches/${enc}/items/${i}/thumbnail`);
    $("#compare-full").href = withToken(`${API}/batches/${enc}/items/${i}/output`);
    $("#compare-dialog").showModal();
  }

  async function loadItems() {
    itemsDirty = false;
    const f = $("#item-filter").value;
    const q = `?limit=${state.perPage}&offset=${state.page * state.perPage}` + (f ? "&status=" + f : "");
    const data = await api(`/batches/${enc}/items` + q);
    current(gen);
    const rows = data.items.map((r) => {
      const tr = el("tr", { "data-status": r.status });
      tr.append(el("td", {}, r.i), el("td", {}, r.status), el("td", { class: "path" }, r.src || ""));
      tr.append(r.error ? el("td", { class: "err path" }, `${r.error_class}: ${r.error}`) : el("td", { class: "path" }, r.output || ""));
      return tr;
    });
    $("#items tbody").replaceChildren(...rows);
    const pages = Math.max(1, Math.ceil(data.total / state.perPage));
    $("#page").textContent = `${state.page + 1} / ${pages}`;
    $("#prev").disabled = state.page === 0;
    $("#next").disabled = state.page + 1 >= pages;
    const done = await api(`/batches/${enc}/items?status=completed&limit=48`);
    current(gen);
    const box = $("#thumbs");
    const have = new Set([...box.children].map((b) => b.dataset.i));
    for (const r of done.items) if (r.output && !have.has(String(r.i))) box.append(thumb(r.i));
  }

  async function act(what, body) {
    const msg = $("#action-msg");
    msg.hidden = false;
    msg.className = "msg";
    msg.textContent = what + "…";
    try {
      const s = await api(`/batches/${enc}/${what}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body || {}) });
      msg.textContent = s.message || `${what}: ${s.status}`;
      render(Object.assign(await refresh(), {}));
      if (what === "resume" && !state.ws) follow(id, onEvent, gone);
    } catch (e) {
      msg.className = "msg error";
      msg.textContent = e.message;
    }
  }

  $("#btn-pause").onclick = () => act("pause");
  $("#btn-resume").onclick = () => act("resume");
  $("#btn-cancel").onclick = () => { if (confirm("Cancel this batch? It cannot be resumed.")) act("cancel"); };
  $("#btn-zip").href = withToken(`${API}/batches/${enc}/export.zip`);
  $("#btn-sheet").href = withToken(`${API}/batches/${enc}/contact-sheet.jpg`);
  $("#item-filter").onchange = () => { state.page = 0; loadItems(); };
  $("#prev").onclick = () => { state.page--; loadItems(); };
  $("#next").onclick = () => { state.page++; loadItems(); };

  let last = null;
  function onEvent(ev) {
    if (ev.type === "progress" || ev.type === "paused" || ev.type === "finished") {
      last = Object.assign(last || {}, ev);
      render(last);
      itemsDirty = true;
      if (ev.type !== "progress") refresh();
    } else if (ev.type === "item_completed" || ev.type === "item_failed" || ev.type === "started") {
      itemsDirty = true;
    }
  }
  function gone(s, message) {  // the batch is damaged (s: its status) or gone (message): say so, once
    if (state.batch !== id) return;
    stopLive();  // (and the items' refresh)
    for (const b of ["#btn-pause", "#btn-resume", "#btn-cancel"]) $(b).disabled = true;
    const el = s ? $("#b-reason") : $("#action-msg");  // the counts stay as last seen
    if (s) setBadge($("#status"), s.status);
    el.hidden = false;
    el.className = s ? "reason" : "msg error";
    el.textContent = s ? s.reason : message;
  }
  restartLive = () => { stopLive(); follow(id, onEvent, gone); };
  state.timers.push(setInterval(() => { if (itemsDirty) loadItems().catch(() => {}); }, 1000));
  last = await refresh();
  await loadItems();
  follow(id, onEvent, gone);
}

// --- a new batch -------------------------------------------------------------------------------
async function showNew(gen) {
  const view = $("#view");
  view.replaceChildren($("#tpl-new").content.cloneNode(true));
  let files = [];
  try {
    const info = await api("/info");
    current(gen);
    $("#roots").textContent = info.roots.join(", ");
  } catch (e) { if (e instanceof Stale) throw e; /* else shown on submit */ }
  const drop = $("#drop");
  const setFiles = (list) => { files = [...list]; $("#drop-count").textContent = files.length ? files.length + " file(s)" : "none"; };
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); setFiles(e.dataTransfer.files); });
  $("#f-files").onchange = (e) => setFiles(e.target.files);

  $("#new-form").onsubmit = (e) => {
    e.preventDefault();
    const msg = $("#f-msg");
    const fields = {
      pipeline: $("#f-pipeline").value.trim(), out: $("#f-out").value.trim(),
      name: $("#f-name").value.trim(), workers: $("#f-workers").value.trim(),
    };
    const inputs = $("#f-inputs").value.split("\n").map((s) => s.trim()).filter(Boolean);
    const fd = new FormData();
    for (const [k, v] of Object.entries(fields)) if (v) fd.append(k, v);
    for (const i of inputs) fd.append("inputs", i);
    for (const f of files) fd.append("files", f, f.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", API + "/batches");
    if (token()) xhr.setRequestHeader("Authorization", "Bearer " + token());
    const bar = $("#f-progress");
    bar.hidden = files.length === 0;
    xhr.upload.onprogress = (p) => { if (p.lengthComputable) bar.value = p.loaded / p.total * 100; };
    xhr.onload = async () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = { error: xhr.statusText }; }
      if (xhr.status === 401) { await askToken(); return; }
      if (xhr.status === 201) { location.hash = "#/batch/" + encodeURIComponent(body.batch_id); return; }
      msg.hidden = false; msg.className = "msg error"; msg.textContent = body.error || xhr.statusText;
    };
    xhr.onerror = () => { msg.hidden = false; msg.className = "msg error"; msg.textContent = "the server did not answer"; };
    msg.hidden = false; msg.className = "msg"; msg.textContent = "starting…";
    xhr.send(fd);
  };
}

// --- routing -----------------------------------------------------------------------------------
async function route() {
  stopLive();
  state.batch = null;
  const gen = ++state.gen;
  const h = location.hash || "#/";
  try {
    if (h.startsWith("#/batch/")) await showBatch(decodeURIComponent(h.slice(8)), gen);
    else if (h === "#/new") await showNew(gen);
    else await showList(gen);
  } catch (e) {
    if (e instanceof Stale || gen !== state.gen) return;
    $("#view").replaceChildren(el("p", { class: "msg error" }, e.message));
  }
}
window.addEventListener("hashchange", route);
route();
