// Chromium's own EventSource on a page of the server's origin, for tests/test_browser_sse.py.
//
//   node tests/js/sse_browser.mjs '<json config: {"chromium", "origin", "path"}>'
//
// Opens `origin`/healthz (any page of the origin will do), then `new EventSource(path)`, and reports
// what the page sees as JSON lines on stdout: {"step": "request", "lastEventId"} for every
// connection attempt the server answered (with the Last-Event-ID header the browser sent), "refused"
// for an attempt that found no server, "open", "error"
// (the connection dropped or failed: readyState 0 while the browser retries, 2 once it gave up),
// "server-error" (an `event: error` of the stream) and "message" (partition, offset, body and the
// event's lastEventId). A line "close" on stdin closes the EventSource and the browser; the script
// then exits 0. Failures are reported as {"step": "failed", "error"} and exit 1.

import { createInterface } from "node:readline";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2]);
const TIMEOUT = 20000;

const say = (report) => process.stdout.write(`${JSON.stringify(report)}\n`);

/** Runs in the page: the EventSource and its listeners; `report` is the binding back to this script. */
function openEventSource(path) {
  const source = new EventSource(path);
  window.kasockiSource = source;
  source.addEventListener("open", () => window.report({ step: "open" }));
  source.addEventListener("error", (event) => {
    if (event instanceof MessageEvent) {
      window.report({ step: "server-error", data: JSON.parse(event.data) }); // the stream's `event: error`
    } else {
      window.report({ step: "error", readyState: source.readyState });
    }
  });
  source.addEventListener("message", (event) => {
    const { _kafka: meta, ...body } = JSON.parse(event.data);
    window.report({
      step: "message",
      topic: meta.topic,
      partition: meta.partition,
      offset: meta.offset,
      body,
      lastEventId: event.lastEventId,
    });
  });
}

const profile = await mkdtemp(join(tmpdir(), "kasocki-sse-"));
let context = null;
let exitCode = 0;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: config.chromium,
    headless: true,
    timeout: TIMEOUT,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (error) => say({ step: "page-error", error: String(error) }));
  // One chain keeps the reports in the order things happened: an attempt's request (its full headers
  // come a little later) before that attempt's open or error.
  let reports = Promise.resolve();
  const inOrder = (step) => {
    reports = reports.then(step).catch((error) => say({ step: "failed", error: String(error) }));
  };
  page.on("request", (request) => {
    if (request.resourceType() !== "eventsource") return;
    inOrder(async () => {
      // Once answered, the headers the network stack sent, Last-Event-ID among them; an attempt that failed
      // (the server was down) only has the provisional headers, which do not show it.
      const headers = await request.allHeaders();
      if ((await request.response()) === null) say({ step: "refused" });
      else say({ step: "request", lastEventId: headers["last-event-id"] ?? null });
    });
  });
  await page.exposeFunction("report", (report) => inOrder(() => say(report)));
  await page.goto(`${config.origin}/healthz`, { timeout: TIMEOUT });
  await page.evaluate(openEventSource, config.path);
  const input = createInterface({ input: process.stdin });
  for await (const line of input) {
    if (line.trim() === "close") break;
  }
  await page.evaluate(() => window.kasockiSource.close());
} catch (error) {
  say({ step: "failed", error: String(error && error.stack ? error.stack : error) });
  exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  await rm(profile, { recursive: true, force: true }).catch(() => {});
}
process.exit(exitCode);
