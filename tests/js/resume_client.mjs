// kasocki-client.js resumes after socket.io-client reconnects: nothing lost, nothing repeated.
//
//   node tests/js/resume_client.mjs <server url> <topic> <message|batch|consume> <drop after>
//
// The topic has two partitions. The client subscribes to partition 0 from offset 0 and to
// partition 1 at its latest offset, keeps {kind: "keep"} messages with a filter and reads
// them with start (message events), start({batch: 7}) (messages events) or consume.
// After <drop after> messages it drops the transport (socket.io.engine.close()), so that
// socket.io-client reconnects by itself and the server sees a brand-new connection.
//
// It talks with the test over JSON lines: it prints {"step": "subscribed"}, then
// {"step": "dropped"} and waits (blocked, so no reconnect can happen yet) for "go" on
// stdin while the test produces; then {"step": "resumed"}; then it reads until a message
// with {end: true} arrived from each partition and prints {"step": "done"}.
// Any failure or timeout exits non-zero with the reason on stderr.

import assert from "node:assert/strict";
import fs from "node:fs";
import { io } from "socket.io-client";
import Kasocki from "../../kasocki_app/static/kasocki_app/kasocki-client.js";

const STEP_TIMEOUT_MS = 20000;
const BATCH = 7;
const [url, topic, mode, dropArg] = process.argv.slice(2);
const dropAfter = Number(dropArg);
if (!url || !topic || !["message", "batch", "consume"].includes(mode) || !(dropAfter > 0)) {
  console.error("usage: resume_client.mjs <server url> <topic> <message|batch|consume> <drop after>");
  process.exit(64);
}

function report(step, data) {
  // Synchronous, so that the line is out before the process blocks on stdin.
  fs.writeSync(1, `${JSON.stringify({ step, ...data })}\n`);
}

function readLineSync() {
  const bytes = [];
  const buffer = Buffer.alloc(1);
  for (;;) {
    const n = fs.readSync(0, buffer, 0, 1, null);
    if (n === 0) throw new Error("stdin closed while waiting for the test");
    if (buffer[0] === 0x0a) return Buffer.from(bytes).toString();
    bytes.push(buffer[0]);
  }
}

function withTimeout(promise, label) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${label}`)), STEP_TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function once(client, event) {
  return new Promise((resolve) => {
    const listener = (payload) => {
      client.off(event, listener);
      resolve(payload);
    };
    client.on(event, listener);
  });
}

async function main() {
  const client = Kasocki.connect(io, url, {
    transports: ["websocket"],
    forceNew: true,
    reconnectionDelay: 50,
    reconnectionDelayMax: 200,
  });
  const socket = client.socket;
  let connection = 0; // which connection a message arrived on (1 = the first)
  const sids = [];
  socket.on("connect", () => {
    connection += 1;
    sids.push(socket.id);
  });
  const readies = [];
  const errors = [];
  client.on("ready", (topics) => readies.push(topics.includes(topic)));
  client.on("err", (error) => errors.push(error));

  const received = [];
  const ends = new Set();
  let finished;
  const allEnds = new Promise((resolve) => {
    finished = resolve;
  });
  let dropped = false;
  const take = (message) => {
    const { partition, offset } = message._kafka;
    received.push({ partition, offset, n: message.n, kind: message.kind, connection });
    if (message.end) ends.add(partition);
    if (ends.size === 2) finished();
    if (mode !== "consume" && received.length >= dropAfter && !dropped) drop();
  };

  // Drop the transport; socket.io-client's own reconnection brings the socket back.
  const drop = () => {
    dropped = true;
    socket.io.engine.close();
  };
  client.on("disconnect", (reason) => {
    report("dropped", { reason, received: received.length, positions: client.positions() });
    // Block the event loop: the reconnect cannot start before the test has produced.
    assert.equal(readLineSync(), "go");
  });
  let resumes = 0;
  client.on("resumed", (resume) => {
    resumes += 1;
    report("resumed", { ...resume, received });
  });

  await withTimeout(once(client, "ready"), "ready");
  const assignments = await withTimeout(
    client.subscribe([
      { topic, partition: 0, offset: 0 },
      { topic, partition: 1 },
    ]),
    "subscribe",
  );
  report("subscribed", { assignments });
  await withTimeout(client.filter({ kind: "keep" }), "filter");

  if (mode === "consume") {
    while (received.length < dropAfter) take(await withTimeout(client.consume(), "consume"));
    // Nothing more is available: this consume is still unanswered when the transport goes.
    const pending = client.consume();
    drop();
    take(await withTimeout(pending, "the consume sent before the drop"));
    while (ends.size < 2) take(await withTimeout(client.consume(), "consume"));
  } else {
    if (mode === "message") client.on("message", take);
    else client.on("messages", (batch) => {
      assert.ok(batch.length >= 1 && batch.length <= BATCH, `batch of ${batch.length}`);
      batch.forEach(take);
    });
    await withTimeout(client.start(mode === "batch" ? { batch: BATCH } : null), "start");
  }

  await withTimeout(allEnds, "the end markers");
  if (mode !== "consume") await withTimeout(client.stop(), "stop");
  report("done", { received, readies, errors, sids, resumes, positions: client.positions() });
  client.close();
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error && error.stack ? error.stack : error);
    process.exit(1);
  },
);
