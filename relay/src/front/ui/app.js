// tunnelgate dashboard. Plain JavaScript, no dependencies, served by the
// relay itself. Every data call goes to the relay's own API with the
// tab's credentials (a client certificate the browser presents, or an
// API key kept in sessionStorage), so a tenant sees only its nodes.
"use strict";

const state = { nodes: [], live: false, key: sessionStorage.getItem("tunnelgate-key") || "" };
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.key) headers["Authorization"] = "Bearer " + state.key;
  const resp = await fetch(path, Object.assign({}, options, { headers }));
  if (resp.status === 401) {
    const body = await resp.json().catch(() => ({}));
    showAuth(body.message || "This relay needs credentials.");
    throw new Error("unauthenticated");
  }
  return resp;
}

function showAuth(why) {
  $("#auth").hidden = false;
  $("#auth-why").textContent = why + " Paste an API key (from tunnelgate-relay api-key create); it stays in this tab only.";
}

$("#auth-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("#auth-key").value.trim();
  sessionStorage.setItem("tunnelgate-key", state.key);
  $("#auth").hidden = true;
  start();
});

// Who this tab acts as. Controls the role cannot use are not shown: the
// relay would refuse them anyway.
const MAY_ADD_NODES = ["admin", "enroller"];
const MAY_LIST_NODES = ["admin", "operator", "viewer"];
async function whoami() {
  const resp = await api("/v1/whoami");
  const me = await resp.json();
  // A scoped caller sees its scope's nodes only; say which.
  const scope = me.scope && me.scope !== "*" ? " · nodes " + me.scope : "";
  $("#whoami").textContent = me.tenant + " · " + me.role + scope;
  $("#whoami").dataset.role = me.role;
  $("#add-node").hidden = !MAY_ADD_NODES.includes(me.role);
  return me;
}

async function start() {
  let me;
  try {
    me = await whoami();
  } catch (_) {
    return;
  }
  if (MAY_LIST_NODES.includes(me.role)) {
    watchNodes();
  } else {
    setLive(false, "no node list for role " + me.role);
    $("#empty").hidden = false;
    $("#empty").textContent = "The role " + me.role + " cannot list nodes; it can add them: use Add a node.";
  }
}

function setLive(on, text) {
  state.live = on;
  const live = $("#live");
  live.className = "live " + (on ? "on" : "off");
  live.textContent = text;
}

// The whole fleet as server-sent events: the list again on every change.
let watching = null;
async function watchNodes() {
  if (watching) watching.abort();
  const ctrl = new AbortController();
  watching = ctrl;
  try {
    const resp = await api("/v1/nodes?all=1&watch=1", { signal: ctrl.signal });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    setLive(true, "live");
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (data) {
          state.nodes = JSON.parse(data);
          render();
        }
      }
    }
    throw new Error("the relay closed the stream");
  } catch (e) {
    if (ctrl.signal.aborted || e.message === "unauthenticated") return;
    setLive(false, "reconnecting…");
    setTimeout(() => { if (watching === ctrl) watchNodes(); }, 2000);
  }
}

const statusRank = { offline: 0, "daemon unreachable": 1, connected: 2 };

function matches(node, filter) {
  if (!filter) return true;
  return filter.split(/\s+/).filter(Boolean).every((term) => {
    const eq = term.indexOf("=");
    if (eq > 0) {
      const labels = node.labels || {};
      return labels[term.slice(0, eq)] === term.slice(eq + 1);
    }
    const text = [node.node_id, node.hostname, node.status, node.relay_id, node.transport, node.route,
      ...Object.entries(node.labels || {}).map(([k, v]) => k + "=" + v)].join(" ").toLowerCase();
    return text.includes(term.toLowerCase());
  });
}

function sorted(nodes) {
  const key = $("#sort").value;
  const value = (n) => key === "status" ? statusRank[n.status] : n[key];
  return [...nodes].sort((a, b) => {
    const x = value(a), y = value(b);
    if (x === y || (x == null && y == null)) return a.node_id.localeCompare(b.node_id);
    if (x == null) return 1;
    if (y == null) return -1;
    return x < y ? -1 : 1;
  });
}

function render() {
  const filter = $("#filter").value.trim();
  const shown = sorted(state.nodes.filter((n) => matches(n, filter)));
  const body = $("#nodes tbody");
  body.replaceChildren(...shown.map(row));
  const offline = state.nodes.filter((n) => n.status === "offline").length;
  $("#counts").textContent = `${state.nodes.length} nodes, ${state.nodes.length - offline} online, ${offline} offline`;
  $("#empty").hidden = state.nodes.length > 0;
  if (current()) renderFacts(current());
}

function cell(label, ...content) {
  return el("td", { "data-label": label }, ...content);
}

function row(n) {
  const statusClass = n.status.replace(/ /g, "-");
  const labels = Object.entries(n.labels || {}).map(([k, v]) => el("span", { class: "label", text: `${k}=${v}` }));
  return el("tr", { "data-node": n.node_id, class: n.status === "offline" ? "offline" : "" },
    cell("Node", el("a", { href: "#/node/" + encodeURIComponent(n.node_id), text: n.node_id })),
    cell("Status", el("span", { class: "badge status " + statusClass, text: n.status })),
    cell("Host", n.hostname || "–"),
    cell("Transport", n.transport || "–"),
    cell("Route", n.route || "–"),
    cell("Relay", n.relay_id || "–"),
    cell("RTT", n.rtt_ms != null ? n.rtt_ms.toFixed(1) + " ms" : "–"),
    cell("Docker", n.docker_version || "–"),
    cell("Agent", n.agent_version || "–"),
    cell("Labels", ...labels),
    cell("Connected since", n.connected_since || "–"));
}

// The node page: its facts, its containers and its recent events, read
// through the relay's own Docker path to the node.
function current() {
  const m = location.hash.match(/^#\/node\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

function renderFacts(id) {
  const n = state.nodes.find((x) => x.node_id === id);
  $("#node-title").textContent = id + (n ? ` (${n.status})` : "");
  const facts = n ? [["status", n.status], ["host", n.hostname], ["transport", n.transport], ["route", n.route],
    ["relay", n.relay_id], ["Docker", n.docker_version], ["agent", n.agent_version],
    ["connected since", n.connected_since]] : [["status", "unknown to this relay"]];
  $("#node-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v || "–" })]));
}

let nodeTimer = null;
async function showNode(id) {
  $("#list-view").hidden = true;
  $("#node-view").hidden = false;
  renderFacts(id);
  const base = "/nodes/" + encodeURIComponent(id);
  const load = async () => {
    try {
      const resp = await api(base + "/containers/json?all=1");
      const body = await resp.json();
      if (!resp.ok) throw new Error(body.message || "HTTP " + resp.status);
      $("#containers-note").textContent = body.length ? "" : "No containers on this node.";
      $("#containers tbody").replaceChildren(...body.map((c) => {
        const name = (c.Names && c.Names[0] || c.Id).replace(/^\//, "");
        return el("tr", { "data-container": name },
          cell("Name", name), cell("Image", c.Image), cell("State", c.State), cell("Status", c.Status));
      }));
    } catch (e) {
      $("#containers-note").textContent = "Cannot list containers: " + e.message;
      $("#containers tbody").replaceChildren();
    }
    try {
      const now = Math.floor(Date.now() / 1000);
      const resp = await api(`${base}/events?since=${now - 3600}&until=${now}`);
      const text = resp.ok ? await resp.text() : "";
      const events = text.split("\n").filter(Boolean).map((l) => JSON.parse(l)).reverse().slice(0, 50);
      $("#events").replaceChildren(...events.map((ev) => {
        const when = new Date(ev.time * 1000).toLocaleTimeString();
        const name = (ev.Actor && ev.Actor.Attributes && ev.Actor.Attributes.name) || (ev.Actor && ev.Actor.ID || "").slice(0, 12);
        return el("li", { text: `${when} ${ev.Type} ${ev.Action} ${name}` });
      }));
    } catch (e) {
      $("#events").replaceChildren(el("li", { text: "Cannot read events: " + e.message }));
    }
  };
  clearInterval(nodeTimer);
  await load();
  nodeTimer = setInterval(() => { if (current() === id) load(); }, 5000);
}

function route() {
  const id = current();
  if (id) return showNode(id);
  clearInterval(nodeTimer);
  $("#node-view").hidden = true;
  $("#list-view").hidden = false;
  render();
}

// "Add a node": a join token of this tenant and the command that uses it.
$("#add-node").addEventListener("click", async () => {
  const dialog = $("#add-dialog");
  $("#add-error").hidden = true;
  $("#install-command").textContent = "making a join token…";
  $("#agent-command").textContent = "";
  dialog.showModal();
  try {
    const resp = await api("/v1/tokens?uses=1&ttl=24h", { method: "POST" });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.message || "HTTP " + resp.status);
    $("#install-command").textContent = body.install_command;
    $("#agent-command").textContent = body.agent_command;
  } catch (e) {
    $("#install-command").textContent = "";
    $("#add-error").textContent = "Cannot make a join token: " + e.message;
    $("#add-error").hidden = false;
  }
});

$("#copy-command").addEventListener("click", async () => {
  const text = $("#install-command").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {
    // No clipboard API outside a secure context: select it for Ctrl-C.
    const range = document.createRange();
    range.selectNodeContents($("#install-command"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    document.execCommand("copy");
  }
  $("#copy-command").textContent = "Copied";
  setTimeout(() => { $("#copy-command").textContent = "Copy command"; }, 1500);
});

$("#filter").addEventListener("input", render);
$("#sort").addEventListener("change", render);
window.addEventListener("hashchange", route);
start();
route();
