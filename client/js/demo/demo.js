// The demo page: connection state, live messages of one channel, and a
// publish box. It opens subscribed to the channel the README's curl
// publishes to (scores.m1), or to ?channel=; ?token= passes a JWT.
import * as tether from "/tether.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MAX_ROWS = 200;
const DEFAULT_CHANNEL = "scores.m1";

const client = tether.connect("/ws", {
  token: params.get("token") || undefined,
  // Channels the server subscribed this page to (POST /api/subscribe).
  onServerMessage: (m) => logEvent("message", `${m.channel} #${m.offset} ${JSON.stringify(m.data)}`),
});
let sub = null;
let received = 0;

// ---- connection state ----

function showState(state, node) {
  $("status").dataset.state = state;
  $("state").textContent = state;
  $("node").textContent = node || "";
}

client.on("connecting", (e) => {
  showState("connecting");
  logEvent("connecting", e.attempt > 1 ? `attempt ${e.attempt}` : "");
});
client.on("connected", (e) => {
  showState("connected", e.node);
  logEvent("connected", `node ${e.node}, ${e.conn}`);
});
client.on("disconnected", (e) => {
  showState(e.final ? "closed" : "disconnected");
  const why = e.code ? `${e.reason} (${e.code})` : e.reason;
  logEvent("disconnected", e.final ? `${why}, not reconnecting` : `${why}, retrying in ${(e.delayMs / 1000).toFixed(1)}s`);
});
client.on("recovered", (e) => logEvent("recovered", `${e.channel} after offset ${e.offset}`));
client.on("resync_needed", (e) => logEvent("resync_needed", `${e.channel}: ${e.reason}`));
client.on("subscribed", (e) => logEvent("subscribed", `${e.channel} by the server, at offset ${e.offset}`));
client.on("unsubscribed", (e) => {
  logEvent("unsubscribed", `${e.channel} by the server: ${e.reason}`);
  if (sub && sub.channel === e.channel) {
    setSubscribed(null);
    $("sub-info").textContent = `Unsubscribed by the server (${e.reason}).`;
  }
});
client.on("token_refreshed", (e) => logEvent("token_refreshed", `valid until ${new Date(e.exp * 1000).toLocaleTimeString()}`));
client.on("refresh_failed", (e) => logEvent("refresh_failed", e.error.message));
client.on("subscribe_failed", (e) => {
  logEvent("subscribe_failed", `${e.channel}: ${e.error.message}`);
  setSubscribed(null);
  $("sub-info").textContent = `Refused: ${e.error.message}`;
  $("sub-info").classList.add("error");
});

function logEvent(name, text) {
  const li = document.createElement("li");
  const n = document.createElement("span");
  n.className = "name";
  n.textContent = name;
  li.append(`${clock()} `, n, text ? ` ${text}` : "");
  $("events").prepend(li);
  while ($("events").children.length > 50) $("events").lastChild.remove();
}

// ---- subscription ----

function setSubscribed(s) {
  sub = s;
  $("online").hidden = true;
  showOnline();
  $("sub-btn").textContent = s ? "Unsubscribe" : "Subscribe";
  $("sub-btn").classList.toggle("secondary", !!s);
  $("sub-info").classList.remove("error");
  $("sub-info").textContent = s ? `Subscribing to ${s.channel}…` : "Not subscribed.";
  if (s) {
    s.ready.then(() => {
      if (sub !== s) return;
      $("sub-info").textContent = `Subscribed to ${s.channel}.`;
      showOnline();
    }, () => {});
  }
}

function subscribe(channel) {
  received = 0;
  $("count").textContent = "0";
  $("messages").replaceChildren();
  $("empty").hidden = false;
  try {
    setSubscribed(client.subscribe(channel, showMessage));
  } catch (err) {
    $("sub-info").textContent = err.message;
    $("sub-info").classList.add("error");
  }
}

function showMessage(msg) {
  received++;
  $("count").textContent = String(received);
  $("empty").hidden = true;
  const li = document.createElement("li");
  li.dataset.offset = String(msg.offset);
  const cells = [
    ["offset", `#${msg.offset}`],
    ["time", clock()],
    ["data", typeof msg.data === "string" ? msg.data : JSON.stringify(msg.data)],
  ];
  for (const [cls, text] of cells) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    li.append(span);
  }
  $("messages").prepend(li);
  while ($("messages").children.length > MAX_ROWS) $("messages").lastChild.remove();
}

$("sub-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const channel = $("channel").value.trim();
  const same = sub && sub.channel === channel;
  if (sub) {
    sub.unsubscribe();
    setSubscribed(null);
  }
  if (!same) subscribe(channel);
});

$("channel").addEventListener("input", () => {
  $("pub-channel").textContent = $("channel").value.trim() || "…";
});

// ---- publish ----

$("pub-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const channel = $("channel").value.trim();
  const raw = $("payload").value;
  let data;
  try {
    data = JSON.parse(raw);
  } catch {
    data = raw; // plain text is published as a JSON string
  }
  const out = $("pub-result");
  $("pub-btn").disabled = true;
  try {
    const offset = await client.publish(channel, data);
    out.classList.remove("error");
    out.textContent = `Stored in ${channel} at offset ${offset}.`;
    $("payload").value = "";
  } catch (err) {
    out.classList.add("error");
    out.textContent = `Not published: ${err.message}`;
  } finally {
    $("pub-btn").disabled = false;
  }
});

function clock() {
  return new Date().toLocaleTimeString([], { hour12: false });
}

// ---- "N online": the subscribed channel's presence (--presence) ----

let onlineTimer = 0;
function showOnline() {
  clearTimeout(onlineTimer);
  onlineTimer = setTimeout(async () => {
    const s = sub;
    if (!s || client.state !== "connected") return;
    try {
      const p = await client.presence(s.channel);
      if (sub === s) {
        $("online").textContent = `${p.clients} online`;
        $("online").hidden = false;
      }
    } catch {
      $("online").hidden = true; // the channel has no presence
    }
  }, 200);
}
client.on("join", (e) => {
  logEvent("join", `${who(e)} on ${e.channel}`);
  showOnline();
});
client.on("leave", (e) => {
  logEvent("leave", `${who(e)} on ${e.channel}`);
  showOnline();
});
client.on("connected", showOnline);

// who names a joining or leaving connection: its user, and its connection
// when the user has a name of its own (on an open server each connection is
// its own user).
function who(e) {
  return e.user === e.conn ? e.user : `${e.user} (${e.conn})`;
}
setInterval(showOnline, 5000);

// The README's first minute: open the page, publish to scores.m1 with curl,
// see the message. ?channel= subscribes to another channel instead.
const initial = params.get("channel") || DEFAULT_CHANNEL;
$("channel").value = initial;
$("pub-channel").textContent = initial;
subscribe(initial);

// For the console (and tether's browser tests).
window.demo = { client, tether };
