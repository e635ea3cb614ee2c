/*
 * The curl command for the HTTP stream (GET <prefix>/v2/stream/<topics>, server-sent events) of what
 * the viewer shows: the same topics, start position and filter, so that a terminal gets the same messages.
 *
 * Pure functions on `window.KasockiStreamCommand`; viewer.js renders the result. Start positions map
 * to the stream's own parameters: latest is the default, a date and time (or Earliest, timestamp 0)
 * is `?since=<epoch ms>`, and offsets are a `Last-Event-ID` header, where offset -1 reads as the
 * latest offset of its partition. The filter is `?filter=<URL-encoded JSON>`.
 */
(() => {
  "use strict";

  const TOPICS = "TOPICS"; // the placeholder of the topics in the reversed stream URL (views.viewer)
  const LATEST = -1;

  /** encodeURIComponent, also for the characters it leaves as they are that a shell or a strict parser may not. */
  const encode = (text) =>
    encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

  /** One shell word: single quotes, each quote inside closed, escaped and reopened. */
  const shellQuote = (text) => `'${String(text).replace(/'/g, "'\\''")}'`;

  /**
   * The request for a viewer `subscribe` argument (topic names, or {topic, timestamp}, or
   * {topic[, partition[, offset]]} items) and filter: {url, lastEventId}, or {missing: [topics]}
   * when the offsets name a topic without partitions that `partitions` (topic -> numbers) does not know.
   */
  function streamRequest({ streamUrl, pageUrl, subscription, filter, partitions }) {
    const items = subscription.map((item) => (typeof item === "string" ? { topic: item } : item));
    const topics = [...new Set(items.map((item) => item.topic))];
    const query = [];
    let lastEventId = null;
    const timestamps = new Set(items.map((item) => item.timestamp));
    if (items.every((item) => item.timestamp !== undefined) && timestamps.size === 1) {
      query.push(`since=${encode(String(items[0].timestamp))}`);
    } else if (items.some((item) => item.partition !== undefined)) {
      const entries = [];
      const missing = [];
      for (const item of items) {
        if (item.partition !== undefined) {
          entries.push({ topic: item.topic, partition: item.partition, offset: item.offset ?? LATEST });
        } else if (partitions.has(item.topic)) {
          for (const partition of partitions.get(item.topic)) {
            entries.push({ topic: item.topic, partition, offset: LATEST });
          }
        } else {
          missing.push(item.topic);
        }
      }
      if (missing.length) return { missing };
      lastEventId = JSON.stringify(entries);
    } // else every partition from the latest offset: the stream's default
    if (filter !== null && filter !== undefined) query.push(`filter=${encode(JSON.stringify(filter))}`);
    const at = streamUrl.lastIndexOf(TOPICS);
    const path = streamUrl.slice(0, at) + topics.map(encode).join(",") + streamUrl.slice(at + TOPICS.length);
    const url = new URL(path, pageUrl).href + (query.length ? `?${query.join("&")}` : "");
    return { url, lastEventId };
  }

  /** The command line for a streamRequest() result. */
  function curlCommand({ url, lastEventId }) {
    const header = lastEventId === null ? "" : ` -H ${shellQuote(`Last-Event-ID: ${lastEventId}`)}`;
    return `curl -N${header} ${shellQuote(url)}`;
  }

  window.KasockiStreamCommand = { streamRequest, curlCommand, shellQuote };
})();
