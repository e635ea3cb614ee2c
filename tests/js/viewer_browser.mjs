// Drives the viewer page in headless Chromium for tests/test_viewer.py.
//
//   node tests/js/viewer_browser.mjs '<json config>'
//
// The config names the scenario, the page URL, the Chromium binary and what to wait for. The driver
// prints one JSON object per line: {"event": ...} when pytest should act (produce records), then
// {"result": ...} with what the page showed, or {"error": ...} (exit code 1). Every wait has a timeout.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2]);
const TIMEOUT = config.timeoutMs ?? 20000;

const say = (report) => process.stdout.write(`${JSON.stringify(report)}\n`);

// --- reading the page ---------------------------------------------------------

/** Every table row, newest first, with the preview parsed back into an object. */
async function tableRows(page) {
  return page.$$eval("#messages tbody tr", (rows) =>
    rows.map((row) => {
      const cells = Array.from(row.cells, (cell) => cell.textContent);
      return {
        time: cells[0],
        topic: cells[1],
        partition: Number(cells[2]),
        offset: Number(cells[3]),
        key: cells[4],
        body: JSON.parse(cells[5]),
      };
    }),
  );
}

async function counters(page) {
  return page.evaluate(() => ({
    count: Number(document.getElementById("count").dataset.value),
    rate: document.getElementById("rate").textContent,
    shown: document.getElementById("shown").textContent,
    state: document.getElementById("state").dataset.state,
    connection: document.getElementById("connection").dataset.state,
  }));
}

async function assignments(page) {
  return page.$$eval("#assignments li[data-topic]", (items) =>
    items.map((item) => {
      const { topic, partition, offset } = item.dataset;
      const entry = { topic, partition: Number(partition), offset: Number(offset) };
      if (item.dataset.resetFrom !== undefined) entry.reset_from = Number(item.dataset.resetFrom);
      return entry;
    }),
  );
}

async function errorList(page) {
  return page.$$eval("#errors .error", (items) =>
    items.map((item) => ({
      name: item.dataset.name,
      message: item.querySelector(".message").textContent,
      details: item.querySelector(".details").textContent,
    })),
  );
}

async function inlineText(page, id) {
  return page.evaluate((target) => {
    const node = document.getElementById(target);
    return node.hidden ? null : node.textContent;
  }, id);
}

// --- acting on the page -------------------------------------------------------

async function waitForState(page, state) {
  await page.waitForSelector(`#state[data-state="${state}"]`, { timeout: TIMEOUT });
}

/** Wait until a row holds the record whose body has `seq`. */
async function waitForSeq(page, seq) {
  await page.waitForFunction(
    (wanted) =>
      Array.from(document.querySelectorAll("#messages tbody td.preview")).some(
        (cell) => JSON.parse(cell.textContent).seq === wanted,
      ),
    seq,
    { timeout: TIMEOUT, polling: 50 },
  );
}

async function waitForRows(page, count) {
  await page.waitForFunction((n) => document.querySelectorAll("#messages tbody tr").length >= n, count, {
    timeout: TIMEOUT,
    polling: 50,
  });
}

/** Apply `text` as the filter and wait for the outcome: the inline error changes or the filter is active. */
async function applyFilter(page, text) {
  const before = await inlineText(page, "filter-error");
  await page.fill("#filter", text);
  await page.click("#apply-filter");
  await page.waitForFunction(
    (previous) => {
      const error = document.getElementById("filter-error");
      const shown = error.hidden ? null : error.textContent;
      const status = document.getElementById("filter-status").dataset.state;
      return (shown !== null && shown !== previous) || (shown === null && status === "active");
    },
    before,
    { timeout: TIMEOUT },
  );
  return {
    error: await inlineText(page, "filter-error"),
    status: await page.$eval("#filter-status", (node) => node.dataset.state),
  };
}

async function pickTopic(page, topic) {
  await page.locator(`#topics input[value="${topic}"]`).check({ timeout: TIMEOUT });
}

async function start(page) {
  await page.click("#start");
  await page.waitForFunction(
    () => {
      const state = document.getElementById("state").dataset.state;
      return state === "streaming" || (state !== "starting" && !document.getElementById("start").disabled);
    },
    null,
    { timeout: TIMEOUT },
  );
  return page.$eval("#state", (node) => node.dataset.state);
}

async function startOrExplain(page, what) {
  const state = await start(page);
  if (state !== "streaming") {
    throw new Error(`start from ${what} ended in state ${state}; errors: ${JSON.stringify(await errorList(page))}`);
  }
}

async function stop(page) {
  await page.click("#stop");
  await page.waitForSelector('#state[data-state="stopped"]', { timeout: TIMEOUT });
}

/** A wall-clock value for a datetime-local input, in `timeZone`, computed apart from the page's own code. */
function localDateTime(ms, timeZone) {
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat("en-CA", {
      timeZone,
      hourCycle: "h23",
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
    })
      .formatToParts(new Date(ms))
      .map((part) => [part.type, part.value]),
  );
  return `${parts.year}-${parts.month}-${parts.day}T${parts.hour}:${parts.minute}:${parts.second}`;
}

// --- scenarios ----------------------------------------------------------------

/** Latest position: live rows, the bounded table, a filter, invalid filters, the detail view, a screenshot. */
async function streamScenario(page) {
  await page.goto(config.url, { timeout: TIMEOUT });
  await pickTopic(page, config.topic);
  await startOrExplain(page, "latest");
  say({ event: "streaming" });

  await waitForSeq(page, config.lastSeq);
  const streamed = { rows: await tableRows(page), counters: await counters(page) };

  const applied = await applyFilter(page, JSON.stringify(config.filter));
  say({ event: "filtered" });
  await waitForSeq(page, config.lastFilteredSeq);
  const filtered = { rows: await tableRows(page), counters: await counters(page), applied };

  const notJson = await applyFilter(page, '{"color": ');
  const rejected = await applyFilter(page, JSON.stringify(config.invalidFilter));

  await page.click("#messages tbody tr:first-child");
  await page.waitForSelector("#detail:not([hidden])", { timeout: TIMEOUT });
  const detail = {
    title: await page.textContent("#detail-title"),
    message: JSON.parse(await page.textContent("#detail-json")),
  };
  await page.screenshot({ path: config.screenshot, timeout: TIMEOUT });
  const errors = await errorList(page);
  return { streamed, filtered, notJson, rejected, detail, errors, counters: await counters(page) };
}

/** Start positions: a date and time, then offsets (one out of range), then a partition that does not exist. */
async function positionsScenario(page) {
  await page.goto(config.url, { timeout: TIMEOUT });
  await pickTopic(page, config.topic);

  await page.check('input[name="position"][value="time"]');
  const since = localDateTime(config.since, config.timezone);
  await page.fill("#since", since);
  await startOrExplain(page, "time");
  await waitForRows(page, config.expectTimeRows);
  const time = { since, assignments: await assignments(page), rows: await tableRows(page) };
  await stop(page);

  await page.click("#clear");
  await page.check('input[name="position"][value="offsets"]');
  await page.fill(`#offsets input[data-topic="${config.topic}"]`, config.offsets);
  await startOrExplain(page, "offsets");
  await waitForRows(page, config.expectOffsetRows);
  const offsets = { assignments: await assignments(page), rows: await tableRows(page) };
  await stop(page);

  await page.fill(`#offsets input[data-topic="${config.topic}"]`, config.badOffsets);
  const badState = await start(page);
  await page.waitForSelector("#errors .error", { timeout: TIMEOUT });
  const bad = { state: badState, errors: await errorList(page), counters: await counters(page) };
  return { time, offsets, bad };
}

/** Earliest: every selected topic from the oldest offset still in each partition's log. */
async function earliestScenario(page) {
  await page.goto(config.url, { timeout: TIMEOUT });
  for (const topic of config.topics) await pickTopic(page, topic);
  await page.check('input[name="position"][value="earliest"]');
  await startOrExplain(page, "earliest");
  await waitForRows(page, config.expectRows);
  return { assignments: await assignments(page), rows: await tableRows(page), errors: await errorList(page) };
}

/** The rate: none yet right after the first messages; more messages, then a rate once streaming has lasted longer. */
async function rateScenario(page) {
  await page.goto(config.url, { timeout: TIMEOUT });
  await pickTopic(page, config.topic);
  const clicked = Date.now();
  await startOrExplain(page, "latest");
  say({ event: "streaming" });
  await waitForRows(page, config.expectRows);
  // Watch the rate for a while after the messages: sampling runs twice a second.
  const rates = new Set();
  for (const until = Date.now() + config.watchMs; Date.now() < until; ) {
    rates.add(await page.textContent("#rate"));
    await page.waitForTimeout(50);
  }
  const early = { ...(await counters(page)), rates: [...rates], elapsedMs: Date.now() - clicked };
  say({ event: "watched" });
  await waitForRows(page, config.laterRows);
  // Resolves with the first rate shown, read in the same poll that saw it.
  const shown = await page.waitForFunction(
    () => {
      const text = document.getElementById("rate").textContent;
      return /\d/.test(text) && text;
    },
    null,
    { timeout: TIMEOUT, polling: 50 },
  );
  const later = { ...(await counters(page)), rate: await shown.jsonValue(), elapsedMs: Date.now() - clicked };
  return { early, later, errors: await errorList(page) };
}

/** The curl command for each start position with the filter applied; a topic whose partitions it must learn first. */
async function commandScenario(page) {
  await page.context().grantPermissions(["clipboard-read", "clipboard-write"], { origin: new URL(config.url).origin });
  await page.goto(config.url, { timeout: TIMEOUT });
  await pickTopic(page, config.topic);
  const command = async () => ({
    text: await inlineText(page, "command"),
    hint: await inlineText(page, "command-hint"),
  });
  const none = await command();
  const applied = await applyFilter(page, JSON.stringify(config.filter));
  const latest = await command();
  await page.click("#copy-command");
  await page.waitForFunction(() => document.getElementById("copy-command").textContent !== "Copy", null, {
    timeout: TIMEOUT,
  });
  const copied = {
    button: await page.textContent("#copy-command"),
    clipboard: await page.evaluate(() => navigator.clipboard.readText()),
  };

  await page.check('input[name="position"][value="earliest"]');
  const earliest = await command();
  await page.check('input[name="position"][value="time"]');
  await page.fill("#since", localDateTime(config.since, config.timezone));
  const time = await command();
  await page.check('input[name="position"][value="offsets"]');
  await page.fill(`#offsets input[data-topic="${config.topic}"]`, config.offsets);
  const offsets = await command();

  // Another topic with no offsets given: all its partitions from the latest, which curl must name.
  await pickTopic(page, config.other);
  const unknown = await command();
  await startOrExplain(page, "offsets");
  const started = await command();
  // Under a site's prefix: the URL the page was given, on the page's own origin.
  const prefixed = await page.evaluate(
    () =>
      window.KasockiStreamCommand.streamRequest({
        streamUrl: "/mounted/tools/kasocki/v2/stream/TOPICS",
        pageUrl: window.location.href,
        subscription: ["one", "two"],
        filter: null,
        partitions: new Map(),
      }).url,
  );
  const errors = await errorList(page);
  return { none, applied, latest, copied, earliest, time, offsets, unknown, started, prefixed, errors };
}

const SCENARIOS = {
  command: commandScenario,
  stream: streamScenario,
  positions: positionsScenario,
  earliest: earliestScenario,
  rate: rateScenario,
};

// --- main ---------------------------------------------------------------------

const profile = await mkdtemp(join(tmpdir(), "kasocki-viewer-"));
let context = null;
let exitCode = 0;
try {
  const scenario = SCENARIOS[config.scenario];
  if (!scenario) throw new Error(`unknown scenario ${config.scenario}`);
  context = await chromium.launchPersistentContext(profile, {
    executablePath: config.chromium,
    headless: true,
    timeout: TIMEOUT,
    viewport: { width: 1360, height: 820 },
    locale: "en-US",
    timezoneId: config.timezone,
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
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error") pageErrors.push(message.text());
  });
  const result = await scenario(page);
  say({ result: { ...result, pageErrors } });
} catch (error) {
  say({ error: String(error && error.stack ? error.stack : error) });
  exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  await rm(profile, { recursive: true, force: true }).catch(() => {});
}
process.exit(exitCode);
