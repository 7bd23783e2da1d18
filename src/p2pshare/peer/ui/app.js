"use strict";
// The peer's own page: search, browse, downloads, share, network.
// Everything that comes from the network goes into the page as text
// (textContent after shown()) or as an attribute value, never as markup.

// shown() and human() come from /text.js (one copy for every page).

const $ = id => document.getElementById(id);
const TABS = ["search", "browse", "downloads", "share", "network"];
// The session's key: the login page hands it over in the address's
// fragment (never sent to a server); it is kept in this origin's storage,
// which no other port's page can read, and sent with every API call.
const KEY_ITEM = "p2pshare-key";
let key = "";

// A new element with text (already passed through shown() by the caller).
function el(tag, text, attrs, parent) {
  const node = document.createElement(tag);
  if (text !== null && text !== undefined) node.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function button(label, cls, action, parent) {
  const b = el("button", label, {type: "button", class: cls}, parent);
  b.addEventListener("click", e => { e.preventDefault(); action(); });  // no <summary> toggle
  return b;
}

function duration(seconds) {
  const s = Math.ceil(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min`;
}

function address(host, port) {
  if (!host) return port ? `port ${port}, address not known yet` : "not known yet";
  return `${host.includes(":") ? `[${shown(host)}]` : shown(host)}:${port}`;
}

// A peer's name, or what stands in for it while it registers.
const named = name => name ? shown(name) : "(registering)";

// ---- messages ----

const say = text => { $("message").textContent = text; };  // an error, until the next action

let noticeTimer = null;
function notify(text) {               // a short confirmation
  $("notice").textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { $("notice").textContent = ""; }, 6000);
}

// GET (no body) or POST (a body) some JSON; a non-2xx answer throws an
// Error with the server's sentence.
async function call(url, body) {
  const options = body === undefined ? {cache: "no-store", headers: {"X-Session-Key": key}} : {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-Session-Key": key},
    body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(url, options);
  } catch (e) {
    throw new Error("The peer does not answer: is p2p still running?");
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(data && typeof data.error === "string" ? shown(data.error)
      : `The peer answered ${response.status} ${shown(response.statusText)}.`);
    error.status = response.status;
    throw error;
  }
  return data;
}

// call(), with any error shown in the message area (and null returned).
async function act(url, body) {
  say("");
  try {
    return await call(url, body);
  } catch (e) { say(e.message); return null; }
}

// ---- tabs ----

function showTab(name) {
  if (!TABS.includes(name)) name = "search";
  for (const t of TABS) {
    $(t).hidden = t !== name;
    $("tab-" + t).classList.toggle("current", t === name);
    $("tab-" + t).setAttribute("aria-pressed", String(t === name));
  }
  if (location.hash !== "#" + name) history.replaceState(null, "", "#" + name);
}

// ---- search ----

let searches = 0;  // only the latest search shows its answer

async function search() {
  const q = $("q").value.trim();
  if (!q) { say("Type a name, or words of a name, to search for."); return; }
  const mine = ++searches;
  const coverage = $("coverage");
  coverage.className = "";
  coverage.textContent = "Searching…";
  $("results").hidden = true;
  $("search-empty").hidden = true;
  const data = await act("/api/search?q=" + encodeURIComponent(q));
  if (mine !== searches) return;
  coverage.textContent = "";
  if (!data) return;
  coverage.textContent = shown(data.coverage.text);
  coverage.className = data.coverage.complete ? "complete" : "incomplete";
  const body = $("results").tBodies[0];
  body.replaceChildren(...data.results.map(resultRow));
  $("results").hidden = data.results.length === 0;
  $("search-empty").hidden = data.results.length > 0;
  $("search-empty").textContent = data.coverage.complete ? "Not found."
    : "Nothing found among the peers that answered.";
}

function resultRow(r) {
  const tr = el("tr", null, {class: "result", "data-name": r.name});
  const name = el("td", null, {class: "name"}, tr);
  el("div", shown(r.name), null, name);
  const others = (r.paths || []).filter(p => p !== r.name);
  if (others.length) el("div", "also as: " + others.map(shown).join(", "), {class: "note"}, name);
  el("td", human(r.size), {class: "num"}, tr);
  el("td", null, null, tr).appendChild(el("code", r.sha256.slice(0, 12), {title: r.sha256}));
  el("td", r.holders.map(h => shown(h.name) + (h.partial === null || h.partial === undefined
    ? "" : ` partial ${Math.round(h.partial * 100)}%`)).join(", "), null, tr);
  const actions = el("td", null, {class: "actions"}, tr);
  button("Download", "get", () => get(r.name), actions);
  const slash = r.name.lastIndexOf("/");
  if (slash >= 0) {
    const folder = r.name.slice(0, slash + 1);
    button("Download folder", "get-folder", () => get(folder), actions)
      .setAttribute("title", "all of " + shown(folder));
  }
  return tr;
}

async function get(name) {
  const data = await act("/api/get", {name: name});
  if (!data) return;
  notify(`Queued ${shown(name)}: see the Downloads tab.`);
  updateDownload(data.download);
}

// ---- browse ----

async function browse(name) {
  name = name.trim();
  if (!name) { say("Type the name of a peer."); return; }
  $("holder").value = name;
  $("tree").replaceChildren();
  $("tree-title").textContent = "";
  const data = await act("/api/ls?holder=" + encodeURIComponent(name));
  if (!data) return;
  const n = data.files.length;
  $("tree-title").textContent = `${shown(data.peer)} shares ${n} file${n === 1 ? "" : "s"}`;
  const root = {folders: new Map(), files: []};
  for (const f of data.files) {
    let node = root;
    for (const part of f.name.split("/").slice(0, -1)) {
      if (!node.folders.has(part)) node.folders.set(part, {folders: new Map(), files: []});
      node = node.folders.get(part);
    }
    node.files.push(f);
  }
  $("tree").appendChild(treeList(root, ""));
}

const byText = (a, b) => a.localeCompare(b);

function treeList(node, prefix) {
  const ul = el("ul");
  for (const part of [...node.folders.keys()].sort(byText)) {
    const path = prefix + part + "/";
    const li = el("li", null, {class: "folder", "data-name": path}, ul);
    const details = el("details", null, {open: ""}, li);
    const summary = el("summary", null, null, details);
    el("span", shown(part) + "/", {class: "name"}, summary);
    button("Download folder", "get-folder", () => get(path), summary);
    details.appendChild(treeList(node.folders.get(part), path));
  }
  for (const f of node.files.sort((a, b) => byText(a.name, b.name))) {
    const li = el("li", null, {class: "file", "data-name": f.name}, ul);
    el("span", shown(f.name.slice(prefix.length)), {class: "name"}, li);
    el("span", human(f.size), {class: "size"}, li);
    button("Download", "get", () => get(f.name), li);
  }
  return ul;
}

// ---- downloads ----

let downloads = [];
let routes = new Map();  // download name -> direct, reversed or relayed
const rows = new Map();  // id -> {tr, key}: rows are updated in place, so a
                         // selection or a button under the mouse survives

function showDownloads(list) {
  downloads = list;
  const body = $("queue").tBodies[0];
  const wanted = list.map(d => downloadRow(d));
  const ids = new Set(list.map(d => d.id));
  for (const id of [...rows.keys()]) if (!ids.has(id)) rows.delete(id);
  wanted.forEach((tr, i) => {
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
  });
  while (body.children.length > wanted.length) body.lastElementChild.remove();
  $("queue-empty").hidden = list.length > 0;
  $("queue").hidden = list.length === 0;
}

function updateDownload(d) {
  const i = downloads.findIndex(x => x.id === d.id);
  showDownloads(i < 0 ? downloads.concat([d]) : downloads.map(x => x.id === d.id ? d : x));
}

const FINISHED = ["done", "failed", "cancelled"];

function downloadRow(d) {
  let row = rows.get(d.id);
  if (!row) {
    const tr = el("tr");
    for (let i = 0; i < 8; i++) tr.insertCell();
    tr.cells[2].appendChild(el("progress", null, {"aria-label": "progress"}));
    row = {tr: tr, key: ""};
    rows.set(d.id, row);
  }
  const tr = row.tr, running = d.state === "running";
  const [name, state, bar, bytes, rate, left, holders, actions] = tr.cells;
  tr.className = "download " + d.state;
  tr.setAttribute("data-id", d.id);
  tr.setAttribute("data-name", d.name);
  tr.setAttribute("data-state", d.state);
  const key = JSON.stringify([d.name, d.state, d.reason, d.path, d.directory]);
  if (row.key !== key) {      // rebuilt only when these change
    row.key = key;
    name.className = "name";
    name.replaceChildren(el("div", shown(d.name)));
    if (d.directory) el("div", "into " + shown(d.directory), {class: "note"}, name);
    if (FINISHED.includes(d.state) && d.reason) {
      el("div", shown(d.reason), {class: d.state === "failed" ? "reason failed" : "reason"}, name);
    }
    if (FINISHED.includes(d.state) && d.path) {
      const kept = el("div", "kept at ", {class: "kept"}, name);
      el("code", shown(d.path), {title: "the file or folder on this computer"}, kept);
    }
    actions.className = "actions";
    actions.replaceChildren();
    if (running || d.state === "queued") button("Pause", "pause", () => control("pause", d.id), actions);
    if (d.state === "paused") button("Resume", "resume", () => control("resume", d.id), actions);
    if (!FINISHED.includes(d.state)) button("Cancel", "cancel", () => control("cancel", d.id), actions);
  }
  state.textContent = shown(d.state);
  const progress = bar.firstChild;
  if (d.total > 0) {
    progress.max = d.total;
    progress.value = Math.min(d.done, d.total);
  } else if (running) {
    progress.removeAttribute("value");   // indeterminate: size not known yet
  } else {
    progress.max = 1;
    progress.value = d.state === "done" ? 1 : 0;
  }
  bytes.textContent = d.total > 0 ? `${human(d.done)} of ${human(d.total)}` : human(d.done);
  bytes.className = rate.className = left.className = holders.className = "num";
  rate.textContent = running ? human(d.rate) + "/s" : "";
  left.textContent = running && d.rate > 0 && d.total > d.done
    ? duration((d.total - d.done) / d.rate) : "";
  const route = routes.get(d.name);
  holders.textContent = !running ? "" :
    String(d.holders) + (route && route !== "direct" ? ` (${route})` : "");
  return tr;
}

async function control(what, id) {
  const data = await act("/api/" + what, {id: id});
  if (data) updateDownload(data.download);
}

// ---- status: share, network, browse shortcuts ----

let settingsEdited = false;  // the form is refilled until the user types

// A rate as --upload-rate reads it ("8M"), so saving keeps it unchanged.
function rateText(rate) {
  if (!rate) return "";
  for (const [suffix, size] of [["G", 2 ** 30], ["M", 2 ** 20], ["K", 2 ** 10]]) {
    if (rate % size === 0) return String(rate / size) + suffix;
  }
  return String(Math.round(rate));
}

function showStatus(s) {
  $("shared-count").textContent = String(s.shared_count);
  $("shared-bytes").textContent = human(s.shared_bytes);
  $("shared-dir").textContent = shown(s.shared_dir);
  $("downloads-dir").textContent = shown(s.downloads_dir);
  $("indexing").hidden = s.indexed;
  if (!s.indexed && s.indexing) {
    const i = s.indexing;
    if (i.of_bytes > 0) {
      $("indexing-bar").max = i.of_bytes;
      $("indexing-bar").value = Math.min(i.bytes, i.of_bytes);
    } else {
      $("indexing-bar").removeAttribute("value");  // still counting
    }
    $("indexing-text").textContent =
      `files ${i.files} of ${i.of} (${human(i.bytes)} of ${human(i.of_bytes)})`;
  }
  $("settling").hidden = !s.settling;
  $("settling").textContent = `${s.settling} file${s.settling === 1 ? " is" : "s are"} ` +
    "still being written: shared once they stop changing.";
  const ups = (s.transfers || []).filter(t => t.direction === "up");
  // How each running download reaches its holders (shown beside their count).
  routes = new Map((s.transfers || []).filter(t => t.direction === "down")
    .map(t => [t.name, t.path]));
  $("uploads").hidden = ups.length === 0;
  $("uploads-empty").hidden = ups.length > 0;
  $("uploads").tBodies[0].replaceChildren(...ups.map(t => {
    const tr = el("tr");
    el("td", shown(t.name), {class: "name"}, tr);
    el("td", shown(t.peer) + (t.path && t.path !== "direct" ? ` (${t.path})` : ""),
       {class: "name"}, tr);
    const progress = el("progress", null, {"aria-label": "progress"}, el("td", null, null, tr));
    if (t.total > 0) { progress.max = t.total; progress.value = Math.min(t.done, t.total); }
    el("td", human(t.rate) + "/s", {class: "num"}, tr);
    return tr;
  }));
  $("upload-rate-now").textContent = s.upload_rate ? human(s.upload_rate) + "/s" : "unlimited";
  $("max-uploads-now").textContent = String(s.max_uploads);
  if (!settingsEdited) {
    $("upload-rate").value = rateText(s.upload_rate);
    $("max-uploads").value = String(s.max_uploads);
  }
  showNetwork(s);
  showShortcuts(s.neighbours);
}

function showNetwork(s) {
  $("peer-name").textContent = named(s.name);
  $("peer-address").textContent = address(s.host, s.port);
  $("peer-state").textContent = shown(s.state);
  $("peer-root").textContent = s.root ? "yes: this peer is the root of the tree" : "no";
  $("peer-parent").textContent = s.root ? "none (the root)" : s.parent ? shown(s.parent) : "none yet";
  $("neighbours").replaceChildren(...s.neighbours.map(n =>
    el("li", `${shown(n.name)} ${address(n.host, n.port)}`)));
  if (!s.neighbours.length) el("li", "none yet", null, $("neighbours"));
  $("max-neighbours").textContent = String(s.max_neighbours);
  $("network-size").textContent = s.network_peers == null ? "not known now"
    : `${s.network_peers} peer${s.network_peers === 1 ? "" : "s"}`;
  $("network-complete").textContent = s.network_complete ? "yes" : "not yet (still forming)";
  let web = null;
  try { web = s.meta_web ? new URL(s.meta_web) : null; } catch (e) { web = null; }
  const link = $("meta-web");
  link.hidden = !(web && ["http:", "https:"].includes(web.protocol));
  $("meta-none").hidden = !link.hidden;
  if (!link.hidden) {
    link.href = web.href;
    link.target = "_blank";
    link.textContent = shown(web.href);
  }
}

let shortcutsKey = "";
function showShortcuts(neighbours) {
  const key = JSON.stringify(neighbours.map(n => n.name));
  if (key === shortcutsKey) return;  // keep the buttons (and focus) as they are
  shortcutsKey = key;
  const box = $("shortcuts");
  box.replaceChildren();
  if (!neighbours.length) return;
  box.appendChild(document.createTextNode("Neighbours: "));
  for (const n of neighbours) button(shown(n.name), "holder", () => browse(n.name), box);
}

async function saveSettings() {
  const max = Number($("max-uploads").value);
  if (!Number.isInteger(max) || max < 1) { say("Uploads at once is a whole number, 1 or more."); return; }
  const data = await act("/api/settings", {upload_rate: $("upload-rate").value.trim(), max_uploads: max});
  if (!data) return;
  settingsEdited = false;
  showStatus(data);
  notify("Settings saved.");
}

// ---- live updates ----

function listen() {
  const events = new EventSource("/api/events?key=" + encodeURIComponent(key));
  events.addEventListener("downloads", e => showDownloads(JSON.parse(e.data).downloads));
  events.addEventListener("status", e => showStatus(JSON.parse(e.data)));
  events.addEventListener("error", () => { events.close(); poll(); });
}

function poll() {                     // the fallback when the stream fails
  let failed = null;                  // the message a failed poll showed
  const once = async () => {
    try {
      showDownloads((await call("/api/downloads")).downloads);
      showStatus(await call("/api/status"));
      if (failed !== null && $("message").textContent === failed) say("");
      failed = null;
    } catch (e) {
      say(failed = e.message);
    }
  };
  once();
  setInterval(once, 2000);
}

async function start() {
  if (location.hash.startsWith("#key=")) {
    localStorage.setItem(KEY_ITEM, decodeURIComponent(location.hash.slice(5)));
    history.replaceState(null, "", "#search");
  }
  key = localStorage.getItem(KEY_ITEM) || "";
  for (const t of TABS) $("tab-" + t).addEventListener("click", () => showTab(t));
  window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));
  showTab(location.hash.slice(1));
  $("search-go").addEventListener("click", search);
  $("q").addEventListener("keydown", e => { if (e.key === "Enter") search(); });
  $("browse-go").addEventListener("click", () => browse($("holder").value));
  $("holder").addEventListener("keydown", e => { if (e.key === "Enter") browse($("holder").value); });
  const edited = () => { settingsEdited = true; };
  $("upload-rate").addEventListener("input", edited);
  $("max-uploads").addEventListener("input", edited);
  $("save-settings").addEventListener("click", saveSettings);
  let session;
  try {
    session = await call("/api/session");
  } catch (e) {
    say(e.status === 403 ? "This page has no session (it expired, or was never opened): " +
      "open the address that `p2p ui` prints." : e.message);
    return;
  }
  $("peer").textContent = named(session.peer);
  document.title = "p2pshare - " + named(session.peer);
  try {
    showStatus(await call("/api/status"));
    showDownloads((await call("/api/downloads")).downloads);
  } catch (e) {
    say(e.message);
  }
  listen();
}

start();
