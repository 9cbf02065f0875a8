// tether.js: the browser (and Node >= 22) client of tether, protocol v1.
//
// One dependency-free ES module, no build step. See docs/clients.md for a
// walk-through and docs/protocol.md for the wire protocol.
//
//   import * as tether from "/tether.js";
//   // getToken serves the first connect, every refresh_due (the token is
//   // replaced on the open connection) and the reconnect after a 4001.
//   const c = tether.connect("/ws", { getToken: async () => fetchToken() });
//   c.on("connected", (e) => console.log("on node", e.node));
//   c.subscribe("scores.m1", (msg) => render(msg.data));
//   const offset = await c.publish("chat.r1", { text: "hi" });
//   const { clients } = await c.presence("scores.m1"); // with --presence

/**
 * Options of {@link connect}. Every field is optional.
 *
 * @typedef {object} ConnectOptions
 * @property {string} [token] Token sent as the `token` query parameter
 *   (browsers cannot set headers on a WebSocket upgrade).
 * @property {() => (string | Promise<string>)} [getToken] Returns a token
 *   (a JWT) from the application's backend. It is called before every
 *   connection attempt (its token replaces `token`), and on the server's
 *   `refresh_due`, a while before the token expires: its token is then sent
 *   in a `refresh` frame on the open connection, which keeps its
 *   subscriptions (events `token_refreshed` and `refresh_failed`). After a
 *   close with 4001 (the token expired or was refused) the client keeps
 *   calling it, with backoff, until it returns a different token, then
 *   reconnects and recovers. Without it, `refresh_due` is ignored and a 4001
 *   stops the client.
 * @property {(msg: Message) => void} [onServerMessage] Receives the
 *   messages of channels the server subscribed the client to on its own
 *   (the application's `POST /api/subscribe`; event `subscribed`). Without
 *   it those subscriptions are kept, and restored after a reconnect, but
 *   their messages are dropped.
 * @property {number} [minBackoffMs=500] Backoff window of the first
 *   reconnect attempt: the client waits a random time in [0, window) (full
 *   jitter); each failed attempt doubles the window.
 * @property {number} [maxBackoffMs=30000] Cap of the backoff window.
 * @property {number} [watchdogGraceMs=5000] How long past the server's
 *   `ping_interval_ms` the client waits for any frame before it drops the
 *   connection as dead. Negative disables the watchdog.
 * @property {number} [handshakeTimeoutMs=10000] Bound of one attempt: the
 *   upgrade and the `welcome` frame.
 * @property {typeof WebSocket} [WebSocket] WebSocket constructor to use
 *   (default: `globalThis.WebSocket`).
 */

/**
 * A message of a subscribed channel.
 *
 * @typedef {object} Message
 * @property {string} channel
 * @property {number} offset Offsets grow by one per message within an epoch.
 * @property {string} epoch
 * @property {any} data The published JSON value.
 */

/**
 * Event details, by event name:
 *
 * - `connecting`: `{attempt}` (1 for the first attempt after a connection)
 * - `connected`: `{node, conn, pingIntervalMs}`
 * - `disconnected`: `{code, reason, delayMs, final}`; `reason` is one of
 *   `"closed"` (the server closed, see `code`), `"failed"` (the attempt
 *   failed before the welcome: refused, unreachable), `"watchdog"`,
 *   `"drain"`, `"unauthorized"`, `"protocol"` or `"client_closed"`;
 *   `delayMs` is the wait before the next attempt unless `final`.
 * - `recovered`: `{channel, offset, epoch}`: every missed message follows.
 * - `resync_needed`: `{channel, offset, epoch, reason, afterMs}`: messages
 *   were lost (`reason` `"not_recovered"`, `"resync"` or `"gap"`); refetch the
 *   channel's state, after waiting `afterMs` (see {@link jitter}).
 * - `subscribe_failed`: `{channel, error}`: the server refused the
 *   subscription (a {@link TetherError}); it has been removed.
 * - `join`, `leave`: `{channel, user, conn}`: a connection joined or left a
 *   subscribed channel that the server announces joins and leaves of
 *   (`--join-leave`; batched, and none above `--join-leave-max`).
 * - `subscribed`: `{channel, offset, epoch, subscription}`: the server
 *   subscribed the client to channel on its own (the application called
 *   `POST /api/subscribe` for the user). The {@link Subscription} (its
 *   `server` is true) is the client's like any other: restored after a
 *   reconnect, ended by its `unsubscribe()`; its messages go to
 *   `onServerMessage` (see {@link ConnectOptions}).
 * - `unsubscribed`: `{channel, reason, offset, epoch}`: the server ended a
 *   subscription on its own; `reason` is `"forbidden"` (a refreshed token
 *   no longer allows the channel) or `"server"` (the application called
 *   `POST /api/unsubscribe`). It has been removed and is not restored.
 * - `token_refreshed`: `{exp}`: after the server's `refresh_due`, the token
 *   from `getToken` was accepted on the open connection; `exp` is its
 *   expiry in unix seconds.
 * - `refresh_failed`: `{error}`: `getToken` failed or the server refused
 *   its token (a {@link TetherError} `unauthorized`). The connection keeps
 *   its old token until it expires, then the server closes it with 4001
 *   and the client reconnects with a new token from `getToken`.
 *
 * @typedef {"connecting" | "connected" | "disconnected" | "recovered" |
 *   "resync_needed" | "subscribe_failed" | "join" | "leave" | "subscribed" |
 *   "unsubscribed" | "token_refreshed" | "refresh_failed"} EventName
 */

/** A request failure reported by the server, or by the client itself. */
export class TetherError extends Error {
  /**
   * @param {string} code Protocol error code (`forbidden`, `too_large`, …),
   *   or `disconnected` / `closed` for failures of the client.
   * @param {string} message
   */
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "TetherError";
    /** @type {string} */
    this.code = code;
  }
}

const CLOSE_RESTART = 1012;
const CLOSE_UNAUTHORIZED = 4001;
const CLOSE_WATCHDOG = 4008; // sent by the client when its watchdog fires

/**
 * Calls fn after a uniformly random delay in [0, maxMs), so that clients
 * told the same thing at the same moment (a message, a `resync_needed`) do
 * not all fetch at once.
 *
 * @template T
 * @param {() => T | Promise<T>} fn
 * @param {number} maxMs
 * @returns {Promise<T>}
 */
export function jitter(fn, maxMs) {
  return new Promise((resolve, reject) => {
    setTimeout(() => {
      try {
        resolve(fn());
      } catch (err) {
        reject(err);
      }
    }, Math.random() * Math.max(0, maxMs));
  });
}

/**
 * Opens a client that connects to url in the background and keeps
 * reconnecting until {@link Client#close}. url may be ws(s)://, http(s)://
 * or, in a browser, relative to the page ("/ws"); an empty path means /ws.
 *
 * @param {string} url
 * @param {ConnectOptions} [options]
 * @returns {Client}
 */
export function connect(url, options = {}) {
  return new Client(url, options);
}

/** A subscription to one channel; see {@link Client#subscribe}. */
export class Subscription {
  /**
   * @param {Client} client
   * @param {string} channel
   * @param {(msg: Message) => void} onMessage
   */
  constructor(client, channel, onMessage) {
    /** @readonly */
    this.channel = channel;
    /**
     * True for a subscription the server made on its own (event
     * `subscribed`), false for one made by {@link Client#subscribe}.
     */
    this.server = false;
    /** @private */ this._client = client;
    /** @private */ this._onMessage = onMessage;
    /** @private */ this._active = false; // confirmed on the current connection
    /** @private */ this._hasPos = false;
    /** Offset of the last message delivered (or the position at subscribing). */
    this.offset = 0;
    /** Epoch of {@link Subscription#offset}. */
    this.epoch = "";
    /** @private */ this._removed = false;
    /** @private @type {(v?: any) => void} */ this._resolve = () => {};
    /** @private @type {(e: any) => void} */ this._reject = () => {};
    /**
     * Resolves once the server first confirms the subscription; rejects
     * with a {@link TetherError} when it refuses it.
     * @type {Promise<void>}
     */
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.ready.catch(() => {}); // a refusal is also reported as subscribe_failed
  }

  /** Ends the subscription; onMessage is not called again. */
  unsubscribe() {
    this._client._unsubscribe(this);
  }
}

/** A connection to tether that reconnects and recovers by itself. */
export class Client {
  /**
   * @param {string} url
   * @param {ConnectOptions} options
   */
  constructor(url, options) {
    const o = options || {};
    /** @private */ this._url = resolveURL(url);
    /** @private */ this._token = o.token || "";
    /** @private */ this._getToken = o.getToken;
    /** @private */ this._onServerMessage = o.onServerMessage;
    /** @private */ this._minBackoff = positive(o.minBackoffMs, 500);
    /** @private */ this._maxBackoff = Math.max(positive(o.maxBackoffMs, 30000), this._minBackoff);
    /** @private */ this._grace = o.watchdogGraceMs == null || o.watchdogGraceMs === 0 ? 5000 : o.watchdogGraceMs;
    /** @private */ this._handshakeTimeout = positive(o.handshakeTimeoutMs, 10000);
    /** @private */ this._WebSocket = o.WebSocket || globalThis.WebSocket;
    if (!this._WebSocket) {
      throw new Error("tether: no WebSocket implementation (Node needs version 22 or later)");
    }

    /**
     * `"connecting"`, `"connected"`, `"disconnected"` (waiting to
     * reconnect) or `"closed"` (for good).
     * @type {"connecting" | "connected" | "disconnected" | "closed"}
     */
    this.state = "disconnected";
    /** Node id of the current connection, "" while not connected. */
    this.node = "";

    /** @private @type {Map<string, Set<Function>>} */ this._listeners = new Map();
    /** @private @type {Map<string, Subscription>} */ this._subs = new Map();
    /** @private @type {Map<number, {resolve: Function, reject: Function, sub?: Subscription, since?: boolean}>} */
    this._pending = new Map();
    /** @private @type {Array<() => void>} */ this._waiters = [];
    /** @private */ this._nextId = 0;
    /** @private @type {WebSocket | null} */ this._ws = null;
    /** @private */ this._failures = 0; // consecutive failed attempts
    /** @private */ this._timer = null; // backoff or watchdog timer
    /** @private */ this._lastFrame = 0;
    /** @private */ this._pingedFor = -1;
    /** @private */ this._pingInterval = 0;
    /** @private */ this._reconnectAt = 0; // from a reconnect frame
    /** @private */ this._refused = null; // token closed with 4001, if any
    /** @private */ this._usedToken = "";
    /** @private */ this._closed = false;
    /** @private */ this._welcomed = false; // the current socket got its welcome
    /** @private */ this._keepBackoff = false; // the next drop keeps _failures
    /** @private @type {WebSocket | null} */ this._refreshing = null; // the connection a refresh runs on

    setTimeout(() => this._attempt(), 0); // let the caller add listeners first
  }

  /**
   * Adds a listener for a state event (see {@link EventName}) and returns a
   * function that removes it.
   *
   * @param {EventName} event
   * @param {(detail: any) => void} fn
   * @returns {() => void}
   */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  /**
   * Subscribes onMessage to channel. Every message is delivered exactly
   * once and in offset order across reconnects, unless a `resync_needed`
   * event says history could not cover a gap.
   *
   * @param {string} channel
   * @param {(msg: Message) => void} onMessage
   * @returns {Subscription}
   */
  subscribe(channel, onMessage) {
    if (this._closed) throw new TetherError("closed", "the client is closed");
    if (!validChannel(channel)) throw new TetherError("bad_request", `invalid channel name ${JSON.stringify(channel)}`);
    if (this._subs.has(channel)) throw new TetherError("limit", `already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, onMessage);
    this._subs.set(channel, sub);
    if (this.state === "connected") this._sendSubscribe(sub);
    return sub;
  }

  /**
   * Publishes data (any JSON value) to channel and resolves with the
   * message's offset once the server has stored it. While disconnected it
   * waits for the next connection. Rejects with a {@link TetherError}: the
   * server's code (`forbidden`, `too_large`, …), `disconnected` when the
   * connection dropped before the reply (the message may or may not have
   * been published) or `closed`.
   *
   * With `options.idempotencyKey` (1 to 128 bytes) the message is stored at
   * most once per the server's `--idempotency-window`: a publish lost to a
   * disconnect is sent again, with the key, on the next connection, and a
   * key the server has seen resolves with the first message's offset. A key
   * used for another channel rejects with `conflict`.
   *
   * @param {string} channel
   * @param {any} data
   * @param {{idempotencyKey?: string}} [options]
   * @returns {Promise<number>}
   */
  async publish(channel, data, options = {}) {
    const body = JSON.stringify(data);
    const key = options.idempotencyKey;
    const keyField = key ? `,"idempotency_key":${JSON.stringify(key)}` : "";
    for (;;) {
      while (this.state !== "connected") {
        if (this._closed) throw new TetherError("closed", "the client is closed");
        await new Promise((resolve) => this._waiters.push(resolve));
      }
      const id = ++this._nextId;
      const ws = /** @type {WebSocket} */ (this._ws);
      try {
        return await new Promise((resolve, reject) => {
          this._pending.set(id, { resolve, reject });
          ws.send(`{"op":"publish","channel":${JSON.stringify(channel)},"data":${body}${keyField},"id":${id}}`);
        });
      } catch (err) {
        // Safe to send again only with a key: the server stores it once.
        if (!key || !(err instanceof TetherError) || err.code !== "disconnected" || this._closed) throw err;
      }
    }
  }

  /**
   * Reads channel's presence (the channel needs `--presence` or
   * `--join-leave` on the server, and the right to subscribe to it):
   * `{clients, users, members: [{user, conn}], truncated}`. Counts are
   * exact; members are capped by `--presence-max-members`. While
   * disconnected it waits for the next connection. Rejects like
   * {@link publish} (`not_found`: the channel has no presence).
   *
   * @param {string} channel
   * @returns {Promise<{clients: number, users: number, members: {user: string, conn: string}[], truncated: boolean}>}
   */
  async presence(channel) {
    while (this.state !== "connected") {
      if (this._closed) throw new TetherError("closed", "the client is closed");
      await new Promise((resolve) => this._waiters.push(resolve));
    }
    const id = ++this._nextId;
    const ws = /** @type {WebSocket} */ (this._ws);
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      ws.send(`{"op":"presence","channel":${JSON.stringify(channel)},"id":${id}}`);
    });
  }

  /** Closes the connection for good. Pending publishes are rejected. */
  close() {
    if (this._closed) return;
    this._closed = true;
    const ws = this._ws;
    this._ws = null;
    this._detach(new TetherError("closed", "the client is closed"));
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      ws.close(1000);
    }
    clearTimeout(this._timer);
    this._setState("closed");
    this._emit("disconnected", { code: 1000, reason: "client_closed", delayMs: 0, final: true });
    for (const w of this._waiters.splice(0)) w();
  }

  // ---- connection lifecycle ----

  /** @private */
  async _attempt() {
    if (this._closed) return;
    this._failures++;
    this._setState("connecting");
    this._emit("connecting", { attempt: this._failures });
    let token = this._token;
    if (this._getToken) {
      try {
        token = (await this._getToken()) || "";
      } catch (err) {
        this._retry({ code: 0, reason: "failed", error: err });
        return;
      }
      if (this._closed) return;
      if (this._refused !== null && token === this._refused) {
        this._retry({ code: CLOSE_UNAUTHORIZED, reason: "unauthorized" });
        return;
      }
    }
    this._usedToken = token;
    const url = new URL(this._url);
    if (token) url.searchParams.set("token", token);
    let ws;
    try {
      ws = new this._WebSocket(url.toString());
    } catch (err) {
      this._retry({ code: 0, reason: "failed", error: err });
      return;
    }
    this._ws = ws;
    this._welcomed = false;
    this._reconnectAt = 0;
    ws.onmessage = (ev) => this._onFrame(ws, ev.data);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {}; // a close event follows
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      if (this._ws === ws && !this._welcomed) this._drop(ws, 4000, "failed");
    }, this._handshakeTimeout);
  }

  /** @private */
  _onFrame(ws, raw) {
    if (ws !== this._ws) return;
    this._lastFrame = Date.now();
    if (typeof raw !== "string") {
      this._drop(ws, 1003, "protocol");
      return;
    }
    let f;
    try {
      f = JSON.parse(raw);
    } catch {
      this._drop(ws, 1007, "protocol");
      return;
    }
    if (!f || typeof f.op !== "string") {
      this._drop(ws, 1007, "protocol");
      return;
    }
    switch (f.op) {
      case "welcome":
        this._onWelcome(ws, f);
        break;
      case "message":
        this._onMessage(f);
        break;
      case "subscribed":
        this._onSubscribed(f);
        break;
      case "unsubscribed":
        // The answer to our unsubscribe needs nothing; one with a reason
        // is the server's own.
        if (f.reason) this._onServerUnsubscribed(f);
        break;
      case "ack": {
        const req = this._takePending(f.id);
        if (req) req.resolve(f.offset);
        break;
      }
      case "error":
        this._onError(f);
        break;
      case "ping":
        ws.send('{"op":"pong"}');
        break;
      case "resync": {
        const sub = this._subs.get(f.channel);
        if (sub && sub._active) {
          sub.offset = f.offset;
          sub.epoch = f.epoch;
          this._emit("resync_needed", {
            channel: sub.channel, offset: f.offset, epoch: f.epoch, reason: "resync", afterMs: f.after_ms || 0,
          });
        }
        break;
      }
      case "reconnect":
        this._reconnectAt = Date.now() + Math.max(0, f.after_ms || 0);
        break;
      case "presence": {
        const req = this._takePending(f.id);
        if (req) req.resolve({ clients: f.clients, users: f.users, members: f.members || [], truncated: !!f.truncated });
        break;
      }
      case "join":
      case "leave":
        this._emit(f.op, { channel: f.channel, user: f.user, conn: f.conn });
        break;
      case "refresh_due":
        this._refresh(ws);
        break;
      case "refreshed": {
        const req = this._takePending(f.id);
        if (req) req.resolve(f.exp);
        break;
      }
      // pong and unknown ops need nothing.
    }
  }

  /** @private */
  _onWelcome(ws, f) {
    this._welcomed = true;
    this._keepBackoff = false;
    this._refused = null;
    this._pingInterval = f.ping_interval_ms > 0 ? f.ping_interval_ms : 25000;
    this._pingedFor = -1;
    this.node = f.node || "";
    this._setState("connected");
    this._emit("connected", { node: f.node, conn: f.conn, pingIntervalMs: f.ping_interval_ms });
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    for (const w of this._waiters.splice(0)) w();
    this._armWatchdog(ws);
  }

  /**
   * The watchdog: a ping of our own after pingInterval of silence, and the
   * connection dropped after pingInterval + grace. Browsers cannot see
   * WebSocket pings, and a dead TCP path can stay "open" for minutes.
   * @private
   */
  _armWatchdog(ws) {
    clearTimeout(this._timer);
    if (this._grace < 0 || ws !== this._ws) return;
    const idle = Date.now() - this._lastFrame;
    const interval = this._pingInterval;
    if (idle >= interval + this._grace) {
      this._drop(ws, CLOSE_WATCHDOG, "watchdog");
      return;
    }
    let next = interval - idle;
    if (idle >= interval) {
      if (this._pingedFor !== this._lastFrame) {
        this._pingedFor = this._lastFrame;
        ws.send('{"op":"ping"}');
      }
      next = interval + this._grace - idle;
    }
    this._timer = setTimeout(() => this._armWatchdog(ws), next);
  }

  /**
   * Gives up on ws at once: its close handshake may never complete on a
   * dead path, so the client does not wait for its close event.
   * @private
   */
  _drop(ws, code, reason) {
    if (ws !== this._ws) return;
    ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code >= 3000 || code === 1000 ? code : 1000);
    } catch {
      // already closing
    }
    this._lost(code, reason);
  }

  /** @private */
  _onClose(ws, code, reasonText) {
    if (ws !== this._ws) return;
    let reason = this._welcomed ? "closed" : "failed";
    if (code === CLOSE_UNAUTHORIZED) reason = "unauthorized";
    else if (code === CLOSE_RESTART && this._reconnectAt) reason = "drain";
    this._lost(code, reason, reasonText);
  }

  /** @private */
  _lost(code, reason, text) {
    const delay = this._reconnectAt ? Math.max(0, this._reconnectAt - Date.now()) : undefined;
    // A connection that got its welcome resets the backoff, unless it was
    // dropped for a failure a quick retry would not fix.
    if (this._welcomed && !this._keepBackoff) this._failures = 0;
    this._detach(new TetherError("disconnected", "connection lost before the reply"));
    if (reason === "unauthorized") {
      if (!this._getToken) {
        this._closed = true;
        this._setState("closed");
        this._emit("disconnected", { code, reason, text, delayMs: 0, final: true });
        for (const w of this._waiters.splice(0)) w();
        return;
      }
      this._refused = this._usedToken;
    }
    this._retry({ code, reason, text }, delay);
  }

  /** @private */
  _retry(detail, delayMs) {
    if (this._closed) return;
    if (delayMs === undefined) {
      // Full jitter over a window that doubles with every failed attempt.
      const window = Math.min(this._maxBackoff, this._minBackoff * 2 ** Math.min(this._failures, 30));
      delayMs = Math.random() * window;
    }
    this._ws = null;
    this._setState("disconnected");
    this._emit("disconnected", { ...detail, delayMs, final: false });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._attempt(), delayMs);
  }

  /**
   * Ends the current connection's tenure: replies it owed are failed and
   * every subscription awaits its restore.
   * @private
   */
  _detach(err) {
    for (const req of this._pending.values()) {
      if (!req.sub) req.reject(err);
    }
    this._pending.clear();
    for (const sub of this._subs.values()) sub._active = false;
    this.node = "";
  }

  // ---- subscriptions ----

  /** @private */
  _sendSubscribe(sub) {
    const id = ++this._nextId;
    const f = { op: "subscribe", channel: sub.channel, id };
    if (sub._hasPos) f.since = { offset: sub.offset, epoch: sub.epoch };
    this._pending.set(id, { resolve: () => {}, reject: () => {}, sub, since: sub._hasPos });
    /** @type {WebSocket} */ (this._ws).send(JSON.stringify(f));
  }

  /** @private */
  _onSubscribed(f) {
    if (f.id === undefined) {
      this._onServerSubscribed(f);
      return;
    }
    const req = this._takePending(f.id);
    if (!req || !req.sub) return;
    const sub = req.sub;
    if (sub._removed) return;
    sub._active = true;
    if (req.since && f.recovered && f.epoch === sub.epoch) {
      // Every message after sub.offset follows; older ones are dropped.
      this._emit("recovered", { channel: sub.channel, offset: sub.offset, epoch: sub.epoch });
    } else {
      sub.offset = f.offset;
      sub.epoch = f.epoch;
      sub._hasPos = true;
      if (req.since) {
        this._emit("resync_needed", {
          channel: sub.channel, offset: f.offset, epoch: f.epoch, reason: "not_recovered", afterMs: 0,
        });
      }
    }
    sub._resolve();
  }

  /**
   * A subscription the server made on its own (no id): it becomes the
   * client's, restored with `since` after a reconnect like any other. When
   * the client's own subscribe to the channel is on its way, the frame
   * confirms it instead (and the server refuses the client's request as a
   * duplicate, which {@link Client#_onError} then ignores).
   * @private
   */
  _onServerSubscribed(f) {
    let sub = this._subs.get(f.channel);
    const adopted = !sub;
    if (!sub) {
      sub = new Subscription(this, f.channel, (msg) => {
        if (this._onServerMessage) this._onServerMessage(msg);
      });
      sub.server = true;
      this._subs.set(f.channel, sub);
    } else if (sub._active) {
      return;
    }
    if (sub._hasPos && (f.epoch !== sub.epoch || f.offset !== sub.offset)) {
      this._emit("resync_needed", {
        channel: sub.channel, offset: f.offset, epoch: f.epoch, reason: "not_recovered", afterMs: 0,
      });
    }
    sub._active = true;
    sub.offset = f.offset;
    sub.epoch = f.epoch;
    sub._hasPos = true;
    sub._resolve();
    if (adopted) this._emit("subscribed", { channel: sub.channel, offset: f.offset, epoch: f.epoch, subscription: sub });
  }

  /**
   * A subscription the server ended on its own (a reason, no id).
   * @private
   */
  _onServerUnsubscribed(f) {
    const sub = this._subs.get(f.channel);
    if (!sub || sub._removed) return;
    sub._removed = true;
    sub._active = false;
    this._subs.delete(f.channel);
    this._emit("unsubscribed", { channel: sub.channel, reason: f.reason, offset: sub.offset, epoch: sub.epoch });
  }

  // ---- token refresh ----

  /**
   * Answers the server's `refresh_due` on ws: a token from getToken, sent
   * in a `refresh` frame on the open connection. One refresh at a time per
   * connection; without getToken nothing is done and the server closes
   * with 4001 at the token's expiry.
   * @private
   */
  async _refresh(ws) {
    if (!this._getToken || this._refreshing === ws) return;
    this._refreshing = ws;
    try {
      let token;
      try {
        token = (await this._getToken()) || "";
      } catch (err) {
        if (ws === this._ws) this._emit("refresh_failed", { error: err });
        return;
      }
      if (ws !== this._ws || this.state !== "connected") return;
      const id = ++this._nextId;
      let exp;
      try {
        exp = await new Promise((resolve, reject) => {
          this._pending.set(id, { resolve, reject });
          ws.send(JSON.stringify({ op: "refresh", token, id }));
        });
      } catch (err) {
        // A refusal; a lost connection is reported as disconnected.
        if (ws === this._ws) this._emit("refresh_failed", { error: err });
        return;
      }
      if (ws !== this._ws) return;
      this._usedToken = token;
      this._emit("token_refreshed", { exp });
    } finally {
      if (this._refreshing === ws) this._refreshing = null;
    }
  }

  /** @private */
  _onMessage(f) {
    const sub = this._subs.get(f.channel);
    // Not ours, sent before the subscribe took effect, or a duplicate.
    if (!sub || !sub._active || !(f.offset > sub.offset)) return;
    if (f.offset !== sub.offset + 1) {
      this._emit("resync_needed", {
        channel: sub.channel, offset: f.offset, epoch: sub.epoch, reason: "gap", afterMs: 0,
      });
    }
    sub.offset = f.offset;
    try {
      sub._onMessage({ channel: sub.channel, offset: f.offset, epoch: sub.epoch, data: f.data });
    } catch (err) {
      rethrow(err);
    }
  }

  /** @private */
  _onError(f) {
    const err = new TetherError(f.code || "error", f.message || "");
    const req = this._takePending(f.id);
    if (!req) return; // an error about a frame without an id
    if (!req.sub) {
      req.reject(err);
      return;
    }
    const sub = req.sub;
    if (sub._removed) return;
    // The server subscribed the client itself meanwhile (_onServerSubscribed).
    if (sub._active && f.code === "limit") return;
    if (f.code === "unavailable" || f.code === "rate_limited") {
      // The server cannot restore it now: reconnect with backoff and try
      // again rather than lose the subscription.
      this._keepBackoff = true;
      if (this._ws) this._drop(this._ws, 1000, "closed");
      return;
    }
    sub._removed = true;
    if (this._subs.get(sub.channel) === sub) this._subs.delete(sub.channel);
    sub._reject(err);
    this._emit("subscribe_failed", { channel: sub.channel, error: err });
  }

  /** @internal */
  _unsubscribe(sub) {
    if (sub._removed) return;
    sub._removed = true;
    if (this._subs.get(sub.channel) === sub) this._subs.delete(sub.channel);
    if (this.state === "connected" && this._ws) {
      this._ws.send(JSON.stringify({ op: "unsubscribe", channel: sub.channel }));
    }
  }

  // ---- helpers ----

  /** @private */
  _takePending(id) {
    const req = this._pending.get(id);
    if (req) this._pending.delete(id);
    return req;
  }

  /** @private */
  _setState(s) {
    this.state = s;
  }

  /** @private */
  _emit(event, detail) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(detail);
      } catch (err) {
        rethrow(err);
      }
    }
  }
}

/** Resolves url against the page and normalizes scheme and path. */
function resolveURL(url) {
  const base = globalThis.location ? globalThis.location.href : undefined;
  const u = new URL(url, base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new Error(`tether: cannot use url ${url}: scheme must be ws or wss`);
  }
  if (u.pathname === "" || u.pathname === "/") u.pathname = "/ws";
  return u.toString();
}

/** Channel names are 1–255 bytes of printable ASCII without spaces. */
function validChannel(name) {
  return typeof name === "string" && /^[\x21-\x7e]{1,255}$/.test(name);
}

function positive(v, def) {
  return typeof v === "number" && v > 0 ? v : def;
}

/** Reports an exception from user code without breaking the client. */
function rethrow(err) {
  setTimeout(() => {
    throw err;
  }, 0);
}

export default { connect, jitter, Client, Subscription, TetherError };
