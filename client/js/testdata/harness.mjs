// Test harness for tether.js, shared by the Node and the browser tests
// (client/js_test.go, client/browser_test.go): it connects, subscribes one
// channel and records every message and event for the Go test to inspect.
import * as tether from "../tether.js";

const EVENTS = [
  "connecting", "connected", "disconnected", "recovered", "resync_needed", "subscribe_failed",
  "subscribed", "unsubscribed", "token_refreshed", "refresh_failed", "join", "leave",
];

/**
 * @param {string} url
 * @param {string} channel
 * @param {object} opts tether.connect options, plus tokenURL: fetch a
 *   token from there before every attempt, and idempotentPublish
 *   {channel, key, count}: once subscribed, publish count times with that
 *   idempotency key, one after the other (a "published" event each).
 */
export function start(url, channel, opts = {}) {
  const o = { ...opts };
  const idem = o.idempotentPublish;
  delete o.idempotentPublish;
  if (o.tokenURL) {
    const tokenURL = o.tokenURL;
    delete o.tokenURL;
    o.getToken = async () => (await fetch(tokenURL)).text();
  }
  const state = { msgs: [], serverMsgs: [], events: [], ready: false };
  o.onServerMessage = (m) => state.serverMsgs.push([m.channel, m.offset, m.data]);
  const c = tether.connect(url, o);
  for (const ev of EVENTS) {
    c.on(ev, (d) => {
      const rec = { ev, at: Date.now() };
      for (const [k, v] of Object.entries(d || {})) {
        if (v instanceof Error) rec[k] = v.message;
        else if (v instanceof tether.Subscription) rec[k] = { channel: v.channel, server: v.server };
        else rec[k] = v;
      }
      state.events.push(rec);
    });
  }
  const sub = c.subscribe(channel, (m) => state.msgs.push([m.offset, m.epoch, m.data]));
  sub.ready.then(async () => {
    state.ready = true;
    for (let i = 0; idem && i < idem.count; i++) {
      try {
        const offset = await c.publish(idem.channel, { n: i }, { idempotencyKey: idem.key });
        state.events.push({ ev: "published", at: Date.now(), offset });
      } catch (err) {
        state.events.push({ ev: "published", at: Date.now(), error: err.code });
      }
    }
  });
  state.client = c;
  return state;
}

/** A JSON-safe snapshot of state. */
export function snapshot(state) {
  return {
    msgs: state.msgs, server_msgs: state.serverMsgs, events: state.events, ready: state.ready, state: state.client.state,
  };
}
