/*
 * Kasocki client: a promise API over a socket.io-client socket, with automatic resume.
 *
 * Kasocki keeps no consumer state on the server: every message carries
 * `_kafka: {topic, partition, offset, ...}` and a new connection starts from
 * nothing. This client remembers the last offset it delivered for each
 * partition and, whenever socket.io-client reconnects (a brand-new connection
 * for the server), subscribes again from the next offsets, re-applies the
 * filter and restarts streaming, so a reconnect neither loses nor repeats
 * messages.
 *
 * Loading:
 *   browser   <script src=".../socket.io.min.js"></script>
 *             <script src=".../kasocki_app/kasocki-client.js"></script>   (or type="module")
 *             const client = Kasocki.connect(io, "https://host");
 *   node      const { connect } = require(".../kasocki-client.js");
 *             or, from an ES module: import Kasocki from ".../kasocki-client.js";
 *
 * Usage:
 *   client.on("message", (m) => ...);            // also "messages", "err", "ready", "resumed", "disconnect"
 *   await client.subscribe({ topic: "t", partition: 0, offset: 0 });
 *   await client.filter({ "meta.domain": "/wiki/" });
 *   await client.start();                         // or start({ batch: 100 }) for "messages" events
 *   const message = await client.consume();
 *   await client.stop();
 *
 * A rejected promise carries a KasockiError: `name` is the server's error name
 * (AlreadySubscribedError, InvalidFilterError, ...) and `error` the object the
 * server sent. Calls made while disconnected wait for the reconnect; a call whose
 * answer was lost with the connection is sent again once the state is restored.
 *
 * After each resume, "resumed" listeners get {positions, assignments, filter, started}:
 * the offsets asked for, the server's answer (an entry with `reset_from` means the
 * messages from that offset on were no longer in Kafka), the filter re-applied and
 * whether streaming was restarted. If the server refuses to resume, "err" listeners
 * get {name: "ResumeError", origin: "KasockiClient", cause: <the server's error>}
 * and the next reconnect tries again.
 *
 * Limits: resume is exact when a connection receives messages either through
 * consume() or through start(), not both at the same time (the server may then
 * deliver a partition's messages out of order across the two paths). A resume
 * names every partition with its own offset, so it needs the server's
 * KASOCKI_MAX_ASSIGNMENTS to be at least the number of subscribed partitions.
 * socket.io-client does not reconnect after the server itself disconnected the
 * socket ("io server disconnect"); calling socket.connect() then resumes as well.
 */
(function (root, factory) {
  "use strict";
  const api = factory();
  if (typeof module === "object" && module && module.exports) {
    module.exports = api;
  } else {
    root.Kasocki = api;
  }
})(typeof globalThis !== "undefined" ? globalThis : this, function () {
  "use strict";

  const ORIGIN = "KasockiClient";
  const EVENTS = ["ready", "message", "messages", "err", "resumed", "disconnect"];
  // Rejects the resume steps of a connection that went away; never reaches callers.
  const STALE = Symbol("stale connection");

  /** An error answered by the server (or raised by this client); `error` is the plain object. */
  class KasockiError extends Error {
    constructor(error) {
      const plain = error && typeof error === "object" ? error : { message: String(error) };
      super(typeof plain.message === "string" ? plain.message : "Kasocki error");
      this.name = typeof plain.name === "string" ? plain.name : "KasockiError";
      this.origin = plain.origin;
      this.event = plain.event;
      this.error = plain;
    }
  }

  function clientError(name, message, extra) {
    return Object.assign({ name, message, origin: ORIGIN, event: null }, extra);
  }

  function partitionKey(topic, partition) {
    return JSON.stringify([topic, partition]);
  }

  class KasockiClient {
    /**
     * @param socket a socket.io-client Socket. Create it with `autoConnect: false` and
     *   connect it after constructing the client (or use `connect()` below), so that
     *   the first `ready` event is not missed.
     */
    constructor(socket) {
      if (!socket || typeof socket.emit !== "function" || typeof socket.on !== "function") {
        throw new TypeError("KasockiClient needs a socket.io-client socket");
      }
      this.socket = socket;
      /** The topics of the latest `ready` event, or null before the first one. */
      this.topics = null;
      this._listeners = new Map(EVENTS.map((name) => [name, []]));
      this._subscription = null; // the assignments to resume from, once a subscribe succeeded
      this._filter = null; // the filter the server last accepted (null: none)
      this._streaming = false; // whether the server should be streaming
      this._startOptions = null;
      this._streamCalls = 0; // start/stop calls so far: a late start answer must not undo a stop
      this._offsets = new Map(); // partitionKey -> last delivered offset
      this._live = false; // connected and state restored: calls go straight to the server
      this._connection = 0; // bumped at each disconnect
      this._waiting = []; // calls to send once live
      this._inflight = new Set(); // calls sent on the current connection, not yet answered
      this._resumeSteps = new Set(); // rejecters of the resume calls in flight
      this._closed = false;

      this._handlers = {
        connect: () => this._onConnect(),
        disconnect: (reason) => this._onDisconnect(reason),
        ready: (topics) => {
          this.topics = topics;
          this._fire("ready", topics);
        },
        message: (message) => {
          this._delivered(message);
          this._fire("message", message);
        },
        messages: (messages) => {
          if (Array.isArray(messages)) messages.forEach((m) => this._delivered(m));
          this._fire("messages", messages);
        },
        err: (error) => {
          this._followServer(error);
          this._fire("err", error);
        },
      };
      for (const [event, handler] of Object.entries(this._handlers)) socket.on(event, handler);
      if (socket.connected) this._onConnect();
    }

    // --- events -----------------------------------------------------------------

    /** Listen to "ready", "message", "messages", "err", "resumed" or "disconnect". */
    on(event, listener) {
      const listeners = this._listeners.get(event);
      if (!listeners) throw new TypeError(`unknown event ${JSON.stringify(event)}; use one of ${EVENTS.join(", ")}`);
      listeners.push(listener);
      return this;
    }

    off(event, listener) {
      const listeners = this._listeners.get(event);
      if (listeners) {
        const index = listeners.indexOf(listener);
        if (index >= 0) listeners.splice(index, 1);
      }
      return this;
    }

    _fire(event, ...args) {
      for (const listener of [...this._listeners.get(event)]) {
        try {
          listener(...args);
        } catch (error) {
          // A failing listener must not break delivery bookkeeping or the other listeners.
          setTimeout(() => {
            throw error;
          }, 0);
        }
      }
    }

    // --- protocol calls -----------------------------------------------------------

    /** Subscribe once per client; resolves with the effective assignments. */
    subscribe(assignments) {
      return this._call("subscribe", assignments, (res) => {
        this._subscription = Array.isArray(res) ? res.map(assignmentOf) : [];
      });
    }

    /** Set (an object) or clear (null) the server-side filter; resolves with the filter. */
    filter(filters) {
      const value = filters === undefined ? null : filters;
      return this._call("filter", value, (res) => {
        this._filter = res === undefined ? value : res;
      });
    }

    /** The next message that passes the filter. */
    consume() {
      return this._call("consume", null, (message) => this._delivered(message));
    }

    /** Start streaming: "message" events, or "messages" arrays with `{batch: n}`. */
    start(options) {
      const value = options === undefined ? null : options;
      const call = ++this._streamCalls;
      return this._call("start", value, () => {
        if (call === this._streamCalls) {
          this._streaming = true;
          this._startOptions = value;
        }
      });
    }

    /** Stop streaming; no further "message(s)" events arrive once this resolves. */
    stop() {
      this._streamCalls++;
      this._streaming = false;
      this._startOptions = null;
      return this._call("stop", null, () => {});
    }

    /** Where a resume would start: [{topic, partition, offset}], or null before subscribing. */
    positions() {
      if (!this._subscription) return null;
      return this._subscription.map((a) => {
        const last = this._offsets.get(partitionKey(a.topic, a.partition));
        return { topic: a.topic, partition: a.partition, offset: last === undefined ? a.offset : last + 1 };
      });
    }

    /** Disconnect for good: pending calls are rejected with a ClosedError. */
    close() {
      if (this._closed) return;
      this._closed = true;
      this._live = false;
      const error = new KasockiError(clientError("ClosedError", "the Kasocki client was closed"));
      const pending = [...this._inflight, ...this._waiting];
      this._inflight.clear();
      this._waiting = [];
      for (const reject of this._resumeSteps) reject(STALE);
      this._resumeSteps.clear();
      for (const [event, handler] of Object.entries(this._handlers)) this.socket.off(event, handler);
      this.socket.disconnect();
      pending.forEach((call) => call.reject(error));
    }

    _call(event, arg, onSuccess) {
      return new Promise((resolve, reject) => {
        if (this._closed) {
          reject(new KasockiError(clientError("ClosedError", "the Kasocki client was closed", { event })));
          return;
        }
        const call = { event, arg, onSuccess, resolve, reject };
        if (this._live && this.socket.connected) this._send(call);
        else this._waiting.push(call);
      });
    }

    _send(call) {
      const connection = this._connection;
      this._inflight.add(call);
      this.socket.emit(call.event, call.arg, (err, res) => {
        // An answer from a connection that is gone: the call was queued again at the disconnect.
        if (connection !== this._connection || !this._inflight.delete(call)) return;
        if (err) {
          call.reject(new KasockiError(err));
        } else {
          call.onSuccess(res);
          call.resolve(res);
        }
      });
    }

    // --- delivery and resume --------------------------------------------------------

    /** Keep the subscription in step with what the server reports while streaming. */
    _followServer(error) {
      if (!error || !this._subscription) return;
      if (error.name === "PartitionsChangedError" && Array.isArray(error.added)) {
        // New partitions of a whole-topic subscription: resume them too.
        const known = new Set(this._subscription.map((a) => partitionKey(a.topic, a.partition)));
        error.added.forEach((a) => {
          if (!known.has(partitionKey(a.topic, a.partition))) this._subscription.push(assignmentOf(a));
        });
      } else if (error.name === "TopicNotAvailableError" && typeof error.topic === "string") {
        this._forgetTopics([error.topic]); // deleted, or no longer allowed, while streaming
      }
    }

    _forgetTopics(topics) {
      const gone = new Set(topics);
      this._subscription = this._subscription.filter((a) => !gone.has(a.topic));
      for (const key of [...this._offsets.keys()]) {
        if (gone.has(JSON.parse(key)[0])) this._offsets.delete(key);
      }
    }

    /** Subscribe from `positions`; topics that are no longer available are dropped, not fatal. */
    async _resubscribe(positions, connection) {
      try {
        return await this._resumeStep("subscribe", positions, connection);
      } catch (error) {
        const available = error && error.error && error.error.availableTopics;
        if (error === STALE || error.name !== "TopicNotAvailableError" || !Array.isArray(available)) throw error;
        const kept = positions.filter((p) => available.includes(p.topic));
        if (kept.length === 0 || kept.length === positions.length) throw error;
        this._forgetTopics(positions.filter((p) => !available.includes(p.topic)).map((p) => p.topic));
        return await this._resumeStep("subscribe", kept, connection);
      }
    }

    _delivered(message) {
      const meta = message && message._kafka;
      if (!meta || !Number.isInteger(meta.partition) || !Number.isInteger(meta.offset)) return;
      const key = partitionKey(meta.topic, meta.partition);
      const last = this._offsets.get(key);
      if (last === undefined || meta.offset > last) this._offsets.set(key, meta.offset);
    }

    _onDisconnect(reason) {
      this._live = false;
      this._connection++;
      for (const reject of this._resumeSteps) reject(STALE);
      this._resumeSteps.clear();
      // Calls sent on the lost connection go again, first and in order, after the resume.
      this._waiting = [...this._inflight, ...this._waiting];
      this._inflight.clear();
      this._fire("disconnect", reason);
    }

    _onConnect() {
      if (this._closed) return;
      this._resume(this._connection);
    }

    /** Restore subscription, filter and streaming on a new connection, then send the waiting calls. */
    async _resume(connection) {
      const resumed = { positions: null, assignments: null, filter: null, started: false };
      try {
        if (this._subscription) {
          resumed.positions = this.positions();
          const assignments = await this._resubscribe(resumed.positions, connection);
          this._subscription = assignments.map(assignmentOf);
          resumed.assignments = assignments;
        }
        if (this._filter !== null) {
          resumed.filter = await this._resumeStep("filter", this._filter, connection);
        }
        if (this._subscription && this._streaming) {
          await this._resumeStep("start", this._startOptions, connection);
          resumed.started = true;
        }
      } catch (error) {
        if (error === STALE) return; // disconnected again: the next connect resumes
        // The server sent an `err` event too; say which step failed and carry on, so
        // that waiting calls get their own answers. The next reconnect tries again.
        this._fire(
          "err",
          clientError("ResumeError", `could not restore the subscription after a reconnect: ${error.message}`, {
            event: error.event,
            cause: error.error,
          }),
        );
      }
      if (connection !== this._connection || this._closed) return;
      this._live = true;
      if (connection > 0) this._fire("resumed", resumed);
      const waiting = this._waiting;
      this._waiting = [];
      waiting.forEach((call) => this._send(call));
    }

    _resumeStep(event, arg, connection) {
      return new Promise((resolve, reject) => {
        if (connection !== this._connection) {
          reject(STALE);
          return;
        }
        this._resumeSteps.add(reject);
        this.socket.emit(event, arg, (err, res) => {
          if (!this._resumeSteps.delete(reject)) return;
          if (err) reject(new KasockiError(err));
          else resolve(res);
        });
      });
    }
  }

  function assignmentOf(a) {
    return { topic: a.topic, partition: a.partition, offset: a.offset };
  }

  /**
   * Open a socket with socket.io-client's `io` function and wrap it.
   * `options` go to `io` (for example `{transports: ["websocket"]}`).
   */
  function connect(io, url, options) {
    if (typeof io !== "function") throw new TypeError("connect needs socket.io-client's io function");
    const socket = io(url, Object.assign({}, options, { autoConnect: false }));
    const client = new KasockiClient(socket);
    socket.connect();
    return client;
  }

  return { KasockiClient, KasockiError, connect };
});
