// The README's client flow: emit subscribe, filter and consume one after another,
// without waiting for acknowledgements (the original server handled them in order).
//
//   node tests/js/pipelined_client.mjs <server url> <topic>
//
// Prints {acks: [[event, err, res], ...], errs: [...]} once subscribe and the three
// consumes are acknowledged; exits non-zero on a timeout.

import { io } from "socket.io-client";

const TIMEOUT_MS = 15000;
const [url, topic] = process.argv.slice(2);
if (!url || !topic) {
  console.error("usage: pipelined_client.mjs <server url> <topic>");
  process.exit(64);
}

const socket = io(url, { transports: ["websocket"], reconnection: false });
const acks = [];
const errs = [];
const timer = setTimeout(() => {
  console.error(`timed out; acks so far: ${JSON.stringify(acks)}`);
  process.exit(1);
}, TIMEOUT_MS);

const ackFor = (event) => (err, res) => {
  acks.push([event, err, res]);
  if (acks.length === 4) {
    clearTimeout(timer);
    socket.disconnect();
    process.stdout.write(`${JSON.stringify({ acks, errs })}\n`, () => process.exit(0));
  }
};

socket.on("err", (error) => errs.push(error));
socket.once("ready", () => {
  socket.emit("subscribe", [{ topic, partition: 0, offset: 0 }], ackFor("subscribe"));
  socket.emit("filter", { color: "blue" });
  socket.emit("consume", null, ackFor("consume"));
  socket.emit("consume", null, ackFor("consume"));
  socket.emit("consume", null, ackFor("consume"));
});
