/*
 * Kasocki live viewer: pick topics and a start position, filter, and watch messages stream in.
 *
 * Speaks the Kasocki protocol over the official socket.io client (global `io`). A connection can
 * subscribe once, so a new topic selection or start position opens a fresh connection; Start after
 * Stop with the same selection resumes the existing one where it left off.
 */
(() => {
  "use strict";

  const MAX_ROWS = 500; // the table keeps the newest rows only, however fast the stream is
  const MAX_ERRORS = 50;
  const ACK_TIMEOUT_MS = 15000;
  const PREVIEW_CHARS = 300;
  const RATE_WINDOW_MS = 5000; // the rate is shown once streaming has run this long, and covers this span
  const RATE_SAMPLE_MS = 500;
  const READY_TIMEOUT_MS = 10000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    connection: $("connection"),
    state: $("state"),
    rate: $("rate"),
    rateStat: $("rate-stat"),
    count: $("count"),
    shown: $("shown"),
    subscription: $("subscription"),
    lockedHint: $("locked-hint"),
    topics: $("topics"),
    earliestFields: $("earliest-fields"),
    offsetsFields: $("offsets-fields"),
    offsets: $("offsets"),
    timeFields: $("time-fields"),
    since: $("since"),
    timezone: $("timezone"),
    positionError: $("position-error"),
    start: $("start"),
    stop: $("stop"),
    clear: $("clear"),
    filter: $("filter"),
    applyFilter: $("apply-filter"),
    clearFilter: $("clear-filter"),
    filterError: $("filter-error"),
    filterStatus: $("filter-status"),
    assignments: $("assignments"),
    errors: $("errors"),
    content: $("content"),
    rows: document.querySelector("#messages tbody"),
    empty: $("empty"),
    detail: $("detail"),
    detailTitle: $("detail-title"),
    detailJson: $("detail-json"),
    detailClose: $("detail-close"),
    command: $("command"),
    commandHint: $("command-hint"),
    copyCommand: $("copy-command"),
  };

  // --- connection state ------------------------------------------------------

  let socket = null;
  let session = null; // {key, assignments} once the current socket is subscribed
  let streaming = false;
  let busy = false; // a start, stop or filter call is in flight
  let appliedFilter = null; // the last filter the server accepted
  let topicsSeen = false;

  /** A Kasocki error object from an ack or an `err` event (as opposed to a client-side failure). */
  const isServerError = (value) => value !== null && typeof value === "object" && value.origin === "Kasocki";

  function openSocket() {
    if (socket) {
      socket.off(); // events of the connection we leave are not ours any more
      socket.disconnect();
    }
    session = null;
    renderAssignments(null);
    const s = io({ forceNew: true });
    socket = s;
    setConnection("connecting", "connecting…");
    let readyTimer = null;
    s.on("connect", () => {
      setConnection("connected", "connected");
      // The server sends `ready` right after connecting; silence means it failed before it could.
      clearTimeout(readyTimer);
      readyTimer = setTimeout(() => {
        if (socket !== s || !s.connected) return;
        reportError({
          name: "ClientError",
          message: `The server sent no list of topics (ready) within ${READY_TIMEOUT_MS / 1000} s; see its log.`,
        });
      }, READY_TIMEOUT_MS);
    });
    s.on("connect_error", (error) => {
      setConnection("error", "cannot connect");
      reportError({ name: "ConnectionError", message: error.message || String(error) });
      error.reported = true;
    });
    s.on("disconnect", (reason) => {
      setConnection("disconnected", "disconnected");
      if (session || streaming) {
        reportError({
          name: "Disconnected",
          message: `The connection was lost (${reason}), which ends the subscription. Press Start to subscribe again.`,
        });
      }
      session = null;
      renderAssignments(null);
      setStreaming(false);
      renderStartLabel();
    });
    s.on("ready", (names) => {
      clearTimeout(readyTimer);
      renderTopics(names);
    });
    s.on("err", onServerError);
    s.on("message", receive);
    return s;
  }

  function connected(s) {
    if (s.connected) return Promise.resolve(s);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error("no connection to the server")), ACK_TIMEOUT_MS);
      const onConnect = () => done(null);
      const onError = (error) => done(error);
      function done(error) {
        clearTimeout(timer);
        s.off("connect", onConnect);
        s.off("connect_error", onError);
        if (error) reject(error);
        else resolve(s);
      }
      s.on("connect", onConnect);
      s.on("connect_error", onError);
    });
  }

  /** Emit `event` and settle with the server's ack: resolve with `res`, reject with `err`. */
  function call(s, event, arg) {
    return new Promise((resolve, reject) => {
      // With a timeout the client passes its own error first: (timeout or disconnect, err, res).
      s.timeout(ACK_TIMEOUT_MS).emit(event, arg, (failure, err, res) => {
        if (failure) reject(new Error(`${event}: ${failure.message}`));
        else if (err) reject(err);
        else resolve(res);
      });
    });
  }

  /** Client-side failures go to the error list; server errors already arrived there as `err` events. */
  function reportFailure(error) {
    if (isServerError(error) || error.reported) return;
    reportError({ name: "ClientError", message: error.message || String(error) });
  }

  function onServerError(error) {
    if (error && error.event === "filter") showFilterError(error); // shown inline, next to the filter
    else reportError(error);
  }

  // --- start and stop ----------------------------------------------------------

  async function start() {
    if (busy || streaming) return;
    let request;
    try {
      request = buildSubscription();
    } catch (error) {
      showInline(ui.positionError, error.message);
      return;
    }
    showInline(ui.positionError, null);
    const key = JSON.stringify(request);
    setBusy(true);
    setState("starting", "subscribing…");
    try {
      let s = socket;
      if (!(session && session.key === key && s.connected)) {
        if (session || !s.connected) s = openSocket();
        await connected(s);
        const assignments = await call(s, "subscribe", request);
        session = { key, assignments };
        renderAssignments(assignments);
        // Filters belong to a connection: a new one starts without.
        if (appliedFilter !== null) await call(s, "filter", appliedFilter);
      }
      const since = [performance.now(), arrived]; // messages may arrive before the answer
      await call(s, "start", null);
      setStreaming(true);
      rateSamples = [since];
      renderRate();
    } catch (error) {
      reportFailure(error);
      setStreaming(false);
    } finally {
      setBusy(false);
    }
  }

  async function stop() {
    if (busy || !streaming) return;
    setBusy(true);
    try {
      await call(socket, "stop", null);
      setStreaming(false);
    } catch (error) {
      reportFailure(error);
    } finally {
      setBusy(false);
    }
  }

  /** The `subscribe` argument for the chosen topics and start position; throws with a readable message. */
  function buildSubscription() {
    const topics = selectedTopics();
    if (!topics.length) throw new Error("Pick at least one topic.");
    const mode = positionMode();
    if (mode === "time") {
      if (!ui.since.value) throw new Error("Choose the date and time to start from.");
      // A datetime-local value has no zone: Date reads it as local time, as the user means it.
      const timestamp = new Date(ui.since.value).getTime();
      if (!Number.isSafeInteger(timestamp) || timestamp < 0) throw new Error("That date and time is not usable.");
      return topics.map((topic) => ({ topic, timestamp }));
    }
    // Timestamp 0 is at or before every record, so each partition starts at its log start offset.
    // (Offset 0 would not do: once retention has removed it, KASOCKI_RESET_POLICY applies, "latest" by default.)
    if (mode === "earliest") return topics.map((topic) => ({ topic, timestamp: 0 }));
    if (mode === "offsets") return topics.flatMap((topic) => parseOffsets(topic, offsetInput(topic).value));
    return topics;
  }

  function parseOffsets(topic, text) {
    const parts = text.split(/[\s,;]+/).filter(Boolean);
    if (!parts.length) return [{ topic }];
    return parts.map((part) => {
      const match = /^(\d+)(?::(\d+))?$/.exec(part);
      const partition = match && Number(match[1]);
      const offset = match && match[2] !== undefined ? Number(match[2]) : null;
      if (!match || !Number.isSafeInteger(partition) || (offset !== null && !Number.isSafeInteger(offset))) {
        throw new Error(`${topic}: "${part}" is not a partition:offset pair such as 0:1200.`);
      }
      return offset === null ? { topic, partition } : { topic, partition, offset };
    });
  }

  function positionMode() {
    return document.querySelector('input[name="position"]:checked').value;
  }

  // --- topics and positions ----------------------------------------------------

  function selectedTopics() {
    return Array.from(ui.topics.querySelectorAll("input:checked"), (input) => input.value);
  }

  function renderTopics(names) {
    const chosen = new Set(selectedTopics());
    if (!topicsSeen && Array.isArray(names) && names.length === 1) chosen.add(names[0]);
    topicsSeen = true;
    if (!Array.isArray(names) || !names.length) {
      ui.topics.replaceChildren(
        element("p", "muted", "No topics are available. Allow some with KASOCKI_ALLOWED_TOPICS or in the admin."),
      );
    } else {
      ui.topics.replaceChildren(
        ...names.map((name) => {
          const input = document.createElement("input");
          input.type = "checkbox";
          input.value = name;
          input.checked = chosen.has(name);
          const label = element("label", "topic-choice", "");
          label.append(input, element("span", null, name));
          return label;
        }),
      );
    }
    renderPositionFields();
    renderStartLabel();
    renderCommand();
  }

  const offsetTexts = new Map(); // what the user typed per topic, kept while topics come and go

  function offsetInput(topic) {
    return ui.offsets.querySelector(`input[data-topic="${CSS.escape(topic)}"]`);
  }

  function renderPositionFields() {
    const mode = positionMode();
    ui.earliestFields.hidden = mode !== "earliest";
    ui.offsetsFields.hidden = mode !== "offsets";
    ui.timeFields.hidden = mode !== "time";
    if (mode === "time" && !ui.since.value) ui.since.value = localInputValue(new Date(Date.now() - 3600 * 1000));
    const topics = selectedTopics();
    ui.offsets.replaceChildren(
      ...topics.map((topic) => {
        const input = document.createElement("input");
        input.type = "text";
        input.dataset.topic = topic;
        input.spellcheck = false;
        input.placeholder = "latest";
        input.value = offsetTexts.get(topic) || "";
        input.setAttribute("aria-label", `Offsets for ${topic}`);
        const label = element("label", "offset-field", "");
        label.append(element("span", null, topic), input);
        return label;
      }),
    );
    if (!topics.length) ui.offsets.append(element("p", "muted", "Pick a topic first."));
  }

  function renderAssignments(assignments) {
    for (const topic of new Set((assignments || []).map((a) => a.topic))) {
      knownPartitions.set(topic, assignments.filter((a) => a.topic === topic).map((a) => a.partition));
    }
    renderCommand();
    if (!assignments) {
      ui.assignments.replaceChildren(element("li", "muted", "Not subscribed."));
      return;
    }
    ui.assignments.replaceChildren(
      ...assignments.map((a) => {
        const item = element("li", null, "");
        item.dataset.topic = a.topic;
        item.dataset.partition = a.partition;
        item.dataset.offset = a.offset;
        item.append(element("span", "where", `${a.topic} / ${a.partition}`), element("span", "num", `@ ${a.offset}`));
        if (a.reset_from !== undefined) {
          item.dataset.resetFrom = a.reset_from;
          item.append(element("span", "note", `offset ${a.reset_from} is out of range`));
        }
        return item;
      }),
    );
  }

  /** "Resume" when Start would continue the current subscription rather than subscribe anew. */
  function renderStartLabel() {
    let key = null;
    try {
      key = JSON.stringify(buildSubscription());
    } catch {
      // an incomplete selection cannot be resumed
    }
    const resumable = !streaming && session && key === session.key && socket && socket.connected;
    ui.start.textContent = resumable ? "Resume" : "Start";
  }

  // --- filter ------------------------------------------------------------------

  async function applyFilter(text) {
    if (busy) return;
    showInline(ui.filterError, null);
    let value = null;
    if (text.trim()) {
      try {
        value = JSON.parse(text);
      } catch (error) {
        showInline(ui.filterError, `Not valid JSON: ${error.message}`);
        return;
      }
    }
    if (!socket || !socket.connected) {
      showInline(ui.filterError, "Not connected to the server; try again once connected.");
      return;
    }
    setBusy(true);
    try {
      await call(socket, "filter", value);
      appliedFilter = value;
      renderFilterStatus();
      renderCommand();
    } catch (error) {
      if (isServerError(error)) showFilterError(error);
      else showInline(ui.filterError, error.message);
    } finally {
      setBusy(false);
    }
  }

  function showFilterError(error) {
    showInline(ui.filterError, `${error.name}: ${error.message}`);
    renderFilterStatus();
  }

  function renderFilterStatus() {
    const typed = ui.filter.value.trim();
    let state = appliedFilter === null ? "none" : "active";
    let text =
      appliedFilter === null
        ? "No filter: every message is shown."
        : `Active: only messages matching ${JSON.stringify(appliedFilter)} are shown.`;
    let same = false;
    try {
      same = typed ? JSON.stringify(JSON.parse(typed)) === JSON.stringify(appliedFilter) : appliedFilter === null;
    } catch {
      // not JSON yet: certainly not the applied filter
    }
    if (!same) {
      state = "edited";
      text += " Your edits are not applied yet.";
    }
    ui.filterStatus.dataset.state = state;
    ui.filterStatus.textContent = text;
  }

  // --- the curl command --------------------------------------------------------

  const knownPartitions = new Map(); // topic -> its partitions, from the assignments seen

  /** The curl command of the HTTP stream for the picked topics, start position and applied filter. */
  function renderCommand() {
    let text = "";
    let hint = "";
    try {
      const request = window.KasockiStreamCommand.streamRequest({
        streamUrl: ui.command.dataset.streamUrl,
        pageUrl: window.location.href,
        subscription: buildSubscription(),
        filter: appliedFilter,
        partitions: knownPartitions,
      });
      if (request.missing) {
        hint = `Give the partitions of ${request.missing.join(", ")} (curl names each one), or press Start once.`;
      } else {
        text = window.KasockiStreamCommand.curlCommand(request);
      }
    } catch (error) {
      hint = error.message; // the selection is incomplete: Start would say the same
    }
    if (ui.command.textContent !== text) ui.copyCommand.textContent = "Copy";
    ui.command.textContent = text;
    ui.command.hidden = !text;
    ui.copyCommand.disabled = !text;
    ui.commandHint.textContent = hint;
    ui.commandHint.hidden = !hint;
  }

  async function copyCommand() {
    const text = ui.command.textContent;
    try {
      await navigator.clipboard.writeText(text); // only in secure contexts (https, localhost)
      ui.copyCommand.textContent = "Copied";
    } catch {
      window.getSelection().selectAllChildren(ui.command); // select it for Ctrl+C instead
      ui.copyCommand.textContent = "Selected";
    }
  }

  // --- messages table ----------------------------------------------------------

  let pending = []; // received, not yet drawn
  let flushScheduled = false;
  let received = 0; // since the last Clear
  let arrived = 0; // since the page opened: the rate's counter, which Clear leaves alone
  const rowMessages = new WeakMap(); // row element -> message, forgotten with the row
  let selectedRow = null;

  function receive(message) {
    received += 1;
    arrived += 1;
    pending.push(message);
    // Only the newest MAX_ROWS can be drawn; do not hoard more while frames are not running (hidden tab).
    if (pending.length > 2 * MAX_ROWS) pending = pending.slice(-MAX_ROWS);
    if (!flushScheduled) {
      flushScheduled = true;
      requestAnimationFrame(flush);
    }
  }

  function flush() {
    flushScheduled = false;
    const batch = pending.length > MAX_ROWS ? pending.slice(-MAX_ROWS) : pending;
    pending = [];
    const fragment = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i -= 1) fragment.append(buildRow(batch[i]));
    ui.rows.prepend(fragment);
    while (ui.rows.rows.length > MAX_ROWS) ui.rows.lastElementChild.remove();
    renderCounts();
  }

  function buildRow(message) {
    const meta = (message && message._kafka) || {};
    const row = document.createElement("tr");
    row.tabIndex = 0;
    row.dataset.topic = meta.topic;
    row.dataset.partition = meta.partition;
    row.dataset.offset = meta.offset;
    const time = element("td", "time", formatTime(meta.timestamp));
    if (typeof meta.timestamp === "number") time.title = new Date(meta.timestamp).toISOString();
    const hasKey = meta.key !== null && meta.key !== undefined;
    const key = hasKey ? element("td", "key", meta.key) : element("td", "key muted", "—");
    key.title = key.textContent;
    row.append(
      time,
      element("td", "topic", meta.topic),
      element("td", "num", String(meta.partition)),
      element("td", "num", String(meta.offset)),
      key,
      element("td", "preview", preview(message)),
    );
    rowMessages.set(row, message);
    return row;
  }

  function preview(message) {
    const { _kafka, ...body } = message;
    const text = JSON.stringify(body);
    return text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS)}…` : text;
  }

  /** A datetime-local input value (local wall-clock time, to the second) for ``date``. */
  function localInputValue(date) {
    const pad = (n) => String(n).padStart(2, "0");
    const day = `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
    return `${day}T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  }

  function formatTime(timestamp) {
    if (typeof timestamp !== "number") return "—";
    const date = new Date(timestamp);
    const pad = (n, width = 2) => String(n).padStart(width, "0");
    const seconds = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
    const clock = `${seconds}.${pad(date.getMilliseconds(), 3)}`;
    if (date.toDateString() === new Date().toDateString()) return clock;
    // Another day: the date instead of the milliseconds (the cell's tooltip has the full time).
    return `${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${clock.slice(0, 8)}`;
  }

  function showDetail(row) {
    const message = rowMessages.get(row);
    if (!message) return;
    if (selectedRow) selectedRow.classList.remove("selected");
    selectedRow = row;
    row.classList.add("selected");
    const meta = message._kafka || {};
    ui.detailTitle.textContent = `${meta.topic} / partition ${meta.partition} / offset ${meta.offset}`;
    ui.detailJson.textContent = JSON.stringify(message, null, 2);
    ui.detail.hidden = false;
    ui.content.classList.add("with-detail");
  }

  function hideDetail() {
    if (selectedRow) selectedRow.classList.remove("selected");
    selectedRow = null;
    ui.detail.hidden = true;
    ui.content.classList.remove("with-detail");
  }

  function clearTable() {
    pending = [];
    received = 0;
    ui.rows.replaceChildren();
    hideDetail();
    renderCounts();
  }

  // --- counters ----------------------------------------------------------------

  // [time, arrived] pairs while streaming, the oldest at least RATE_WINDOW_MS old once that much has passed.
  let rateSamples = [];
  const numberFormat = new Intl.NumberFormat();

  function renderCounts() {
    const rows = ui.rows.rows.length;
    ui.count.textContent = numberFormat.format(received);
    ui.count.dataset.value = received;
    ui.shown.textContent = received > rows ? `showing the newest ${numberFormat.format(rows)}` : "";
    ui.empty.hidden = rows > 0;
  }

  function sampleRate() {
    if (!streaming) return;
    const now = performance.now();
    rateSamples.push([now, arrived]);
    while (rateSamples.length > 2 && now - rateSamples[1][0] >= RATE_WINDOW_MS) rateSamples.shift();
    renderRate();
  }

  /** Messages per second over the last window; a dash until streaming has lasted a whole window. */
  function renderRate() {
    const [then, count] = rateSamples.length ? rateSamples[0] : [0, 0];
    const [now, total] = rateSamples.length ? rateSamples[rateSamples.length - 1] : [0, 0];
    if (!streaming || now - then < RATE_WINDOW_MS) {
      ui.rate.textContent = "–";
      return;
    }
    const rate = ((total - count) * 1000) / (now - then);
    ui.rate.textContent = rate >= 10 ? numberFormat.format(Math.round(rate)) : rate.toFixed(1).replace(/\.0$/, "");
  }

  // --- errors and states -------------------------------------------------------

  /** Add an error to the list; the same error again bumps a counter instead of adding a line. */
  function reportError(error) {
    const name = String((error && error.name) || "Error");
    const message = String((error && error.message) || "");
    const event = error && error.event ? String(error.event) : "";
    const key = JSON.stringify([name, message, event]);
    let item = Array.from(ui.errors.children).find((child) => child.dataset.key === key);
    if (item) {
      const times = Number(item.dataset.times) + 1;
      item.dataset.times = times;
      item.querySelector(".times").textContent = `×${times}`;
      item.querySelector("time").textContent = formatTime(Date.now());
    } else {
      item = element("div", "error", "");
      item.dataset.key = key;
      item.dataset.name = name;
      item.dataset.times = 1;
      const close = element("button", "dismiss", "×");
      close.type = "button";
      close.setAttribute("aria-label", "Dismiss");
      close.addEventListener("click", () => item.remove());
      const details = Object.entries(error || {})
        .filter(([field]) => !["name", "message", "origin", "event"].includes(field))
        .map(([field, value]) => `${field}: ${JSON.stringify(value)}`)
        .join(", ");
      item.append(
        element("strong", "name", name),
        element("span", "message", message),
        element("span", "details", [event && `on ${event}`, details].filter(Boolean).join(" · ")),
        element("span", "times", ""),
        element("time", null, ""),
        close,
      );
      item.querySelector("time").textContent = formatTime(Date.now());
    }
    ui.errors.prepend(item);
    while (ui.errors.children.length > MAX_ERRORS) ui.errors.lastElementChild.remove();
  }

  function setConnection(state, text) {
    ui.connection.dataset.state = state;
    ui.connection.textContent = text;
  }

  function setState(state, text) {
    ui.state.dataset.state = state;
    ui.state.textContent = text;
  }

  function setStreaming(on) {
    streaming = on;
    if (!on) rateSamples = []; // a rate spans one stretch of streaming, not the pauses between
    renderRate();
    if (on) setState("streaming", "streaming");
    else setState(session ? "stopped" : "idle", session ? "stopped" : "idle");
    renderButtons();
  }

  function setBusy(on) {
    busy = on;
    renderButtons();
  }

  function renderButtons() {
    ui.start.disabled = busy || streaming;
    ui.stop.disabled = busy || !streaming;
    ui.applyFilter.disabled = busy;
    ui.clearFilter.disabled = busy;
    // The subscription is fixed while streaming: stop to change topics or position.
    ui.subscription.disabled = busy || streaming;
    ui.lockedHint.hidden = !streaming;
    renderStartLabel();
  }

  function showInline(target, text) {
    target.textContent = text || "";
    target.hidden = !text;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text;
    return node;
  }

  // --- wiring ------------------------------------------------------------------

  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
  ui.clear.addEventListener("click", clearTable);
  ui.applyFilter.addEventListener("click", () => applyFilter(ui.filter.value));
  ui.clearFilter.addEventListener("click", () => {
    ui.filter.value = "";
    applyFilter("");
  });
  ui.filter.addEventListener("input", renderFilterStatus);
  ui.filter.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      applyFilter(ui.filter.value);
    }
  });
  // Clear the position error while the user edits, not on blur: a layout shift on blur would move
  // the button being clicked away from under the pointer.
  ui.subscription.addEventListener("input", (event) => {
    if (event.target.dataset.topic) offsetTexts.set(event.target.dataset.topic, event.target.value);
    showInline(ui.positionError, null);
    renderStartLabel();
    renderCommand();
  });
  ui.subscription.addEventListener("change", (event) => {
    if (event.target.name === "position" || ui.topics.contains(event.target)) renderPositionFields();
    renderStartLabel();
    renderCommand();
  });
  ui.copyCommand.addEventListener("click", copyCommand);
  ui.rows.addEventListener("click", (event) => {
    const row = event.target.closest("tr");
    if (row) showDetail(row);
  });
  ui.rows.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    const row = event.target.closest("tr");
    if (!row) return;
    event.preventDefault();
    showDetail(row);
  });
  ui.detailClose.addEventListener("click", hideDetail);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !ui.detail.hidden) hideDetail();
  });

  ui.timezone.textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "browser time zone";
  renderFilterStatus();
  renderCounts();
  renderButtons();
  renderPositionFields();
  renderCommand();
  ui.rateStat.title = `Messages per second over the last ${RATE_WINDOW_MS / 1000} seconds of streaming`;
  setInterval(sampleRate, RATE_SAMPLE_MS);

  if (typeof io !== "function") {
    setConnection("error", "no client");
    reportError({
      name: "ClientError",
      message: "The socket.io client script did not load: install it with `npm ci` and serve static files.",
    });
    ui.start.disabled = true;
    return;
  }
  openSocket();
})();
