// The Kasocki protocol through the official socket.io client, the way existing JS clients use it.
//
//   node tests/js/protocol_client.mjs <server url> <topic> <last offset>
//
// The topic's partition 0 holds JSON messages at offsets 0..<last offset>, each with a
// "color" field, the last one "blue". Prints one JSON object with everything received;
// exits non-zero (with the reason on stderr) when a step fails or times out.

import assert from "node:assert/strict";
import { io } from "socket.io-client";

const STEP_TIMEOUT_MS = 15000;
const [url, topic, lastArg] = process.argv.slice(2);
if (!url || !topic || lastArg === undefined) {
  console.error("usage: protocol_client.mjs <server url> <topic> <last offset>");
  process.exit(64);
}
const lastOffset = Number(lastArg);
assert.ok(Number.isInteger(lastOffset) && lastOffset >= 4, "last offset must be an integer >= 4");

function withTimeout(promise, label) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${label}`)), STEP_TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A socket whose server events are queued, so that a test can await the next one. */
function open() {
  const socket = io(url, { transports: ["websocket"], reconnection: false, forceNew: true });
  const queues = new Map();
  const waiters = new Map();
  for (const event of ["ready", "message", "messages", "err"]) {
    queues.set(event, []);
    waiters.set(event, []);
    socket.on(event, (payload) => {
      const waiting = waiters.get(event);
      if (waiting.length) waiting.shift()(payload);
      else queues.get(event).push(payload);
    });
  }
  const next = (event) =>
    withTimeout(
      new Promise((resolve) => {
        const queued = queues.get(event);
        if (queued.length) resolve(queued.shift());
        else waiters.get(event).push(resolve);
      }),
      `a "${event}" event`,
    );
  const pending = (event) => queues.get(event).splice(0);
  // The acknowledgement of one event, as the (err, res) pair Kasocki answers with.
  const call = (event, arg) =>
    withTimeout(
      new Promise((resolve) => socket.emit(event, arg, (err, res) => resolve({ err, res }))),
      `the ack of "${event}"`,
    );
  const ok = async (event, arg) => {
    const { err, res } = await call(event, arg);
    assert.equal(err, null, `${event} failed: ${JSON.stringify(err)}`);
    return res;
  };
  return { socket, next, pending, call, ok };
}

/** Expect an error ack named `name`, and the same error as an `err` event. */
async function expectError(client, event, arg, name) {
  const { err, res } = await client.call(event, arg);
  assert.ok(err, `${event} should have failed with ${name}`);
  assert.equal(err.name, name);
  assert.equal(err.origin, "Kasocki");
  assert.equal(err.event, event);
  assert.equal(typeof err.message, "string");
  assert.equal(res, null);
  assert.deepEqual(await client.next("err"), err);
  return err;
}

const offsets = (messages) => messages.map((m) => m._kafka.offset);

async function main() {
  const result = { errors: {} };

  // One connection: consume acks, errors, a filter and start/message.
  const client = open();
  result.ready = await client.next("ready");
  assert.ok(result.ready.includes(topic), `${topic} is not in ready: ${JSON.stringify(result.ready)}`);

  result.errors.consumeFirst = await expectError(client, "consume", null, "NotSubscribedError");
  result.errors.startFirst = await expectError(client, "start", null, "NotSubscribedError");

  result.assignments = await client.ok("subscribe", [{ topic, partition: 0, offset: 0 }]);
  assert.deepEqual(result.assignments, [{ topic, partition: 0, offset: 0 }]);
  result.errors.subscribeAgain = await expectError(client, "subscribe", topic, "AlreadySubscribedError");

  result.consumed = [];
  for (let i = 0; i < 3; i++) result.consumed.push(await client.ok("consume", null));
  assert.deepEqual(offsets(result.consumed), [0, 1, 2]);

  result.errors.badFilter = await expectError(client, "filter", "color", "InvalidFilterError");
  result.filter = await client.ok("filter", { color: "blue" });
  assert.deepEqual(result.filter, { color: "blue" });

  assert.equal(await client.ok("start", null), null);
  result.errors.startAgain = await expectError(client, "start", null, "AlreadyStartedError");
  result.streamed = [];
  while (!result.streamed.length || result.streamed.at(-1)._kafka.offset < lastOffset) {
    result.streamed.push(await client.next("message"));
  }
  assert.equal(await client.ok("stop", null), null);
  // Everything streamed before the stop ack has arrived by now: nothing may follow it.
  result.streamed.push(...client.pending("message"));
  assert.ok(result.streamed.every((m) => m.color === "blue"), "the filter let other colors through");

  assert.deepEqual(client.pending("err"), []);
  client.socket.disconnect();

  // The string form of subscribe starts at the latest offset.
  const latest = open();
  await latest.next("ready");
  result.latest = await latest.ok("subscribe", topic);
  latest.socket.disconnect();

  // Another connection reads everything again, in batches.
  const second = open();
  await second.next("ready");
  await second.ok("subscribe", { topic, partition: 0, offset: 0 });
  result.errors.badBatch = await expectError(second, "start", { batch: 0 }, "InvalidArgumentError");
  await second.ok("start", { batch: 4 });
  result.batches = [];
  let received = 0;
  while (received <= lastOffset) {
    const batch = await second.next("messages");
    assert.ok(Array.isArray(batch) && batch.length >= 1 && batch.length <= 4, `bad batch ${JSON.stringify(batch)}`);
    result.batches.push(batch);
    received += batch.length;
  }
  await second.ok("stop", null);
  result.batches.push(...second.pending("messages"));
  assert.deepEqual(
    offsets(result.batches.flat()),
    Array.from({ length: lastOffset + 1 }, (_, i) => i),
  );
  assert.deepEqual(second.pending("err"), []);
  second.socket.disconnect();
  return result;
}

main().then(
  (result) => process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0)),
  (error) => {
    console.error(error && error.stack ? error.stack : error);
    process.exit(1);
  },
);
