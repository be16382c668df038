// The status page: polls /status.json every second and redraws. Every value from the
// node goes into the page through textContent, never as markup.
"use strict";

const POLL_MS = 1000;
let previous = null; // the last answer, for the hit ratio over the last interval

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = String(cell);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function percent(part, whole) {
  return whole > 0 ? (100 * part / whole).toFixed(1) + "%" : "–";
}

function bar(fraction) {
  const outer = el("div", null, "bar");
  const inner = el("div");
  inner.style.width = Math.max(0, Math.min(1, fraction)) * 100 + "%";
  outer.appendChild(inner);
  return outer;
}

function duration(seconds) {
  if (seconds < 60) return seconds + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function totals(lookups) {
  let hits = 0, all = 0;
  for (const tier of Object.values(lookups)) {
    hits += tier.hit + tier.stale;
    all += tier.hit + tier.stale + tier.expired + tier.invalidated + tier.miss;
  }
  return { hits, all };
}

function renderMembers(status) {
  fill("members", status.members.map((m) => {
    const share = el("span");
    share.append(bar(m.share), el("span", " " + (100 * m.share).toFixed(1) + "%"));
    return row([
      el("span", m.id + (m.local ? " (this node)" : "")),
      el("span", m.state, "state-" + m.state),
      m.zone || "–",
      m.http || "–",
      share,
    ]);
  }));
}

function renderHits(status) {
  const now = totals(status.lookups);
  document.getElementById("hit-total").textContent = percent(now.hits, now.all);
  if (previous) {
    const before = totals(previous.lookups);
    const lookups = now.all - before.all;
    document.getElementById("hit-window").textContent =
      lookups > 0 ? percent(now.hits - before.hits, lookups) : "idle";
  }
  fill("tiers-hits", ["memory", "disk"].map((tier) => [tier, status.lookups[tier]]).map(([tier, c]) => row([
    tier, c.hit, c.stale, c.expired, c.invalidated, c.miss,
    percent(c.hit + c.stale + c.expired + c.invalidated + c.miss, now.all),
  ])));
}

function renderUsage(status) {
  const mem = status.tiers.memory, disk = status.tiers.disk;
  fill("usage", [
    row(["memory", bytes(mem.used_bytes), bytes(mem.capacity_bytes), bar(mem.used_bytes / mem.capacity_bytes)]),
    row(["disk", bytes(disk.written_bytes) + " written, " + bytes(disk.read_bytes) + " read since start",
      bytes(disk.capacity_bytes), ""]),
  ]);
  document.getElementById("origins").textContent = status.origins.configured
    ? "Origins: " + status.origins.breakers_open + " circuit breaker(s) open."
    : "No origin configured (KV only).";
}

function targets(p) {
  const span = el("span");
  for (const [kind, ids] of [["key", p.keys], ["tag", p.tags], ["prefix", p.prefixes]]) {
    for (const id of ids) span.appendChild(el("code", kind + " " + id));
  }
  if (p.more > 0) span.appendChild(el("span", "and " + p.more + " more", "muted"));
  if (p.soft) span.appendChild(el("span", " (soft)", "muted"));
  return span;
}

function propagation(p) {
  if (p.error) return el("span", "failed: " + p.error, "failed");
  const c = p.cluster;
  if (!c) return el("span", "this node only", "muted");
  const acked = Object.keys(c.acked).length;
  let text = acked + "/" + c.members + " members, slowest " + c.slowest_ms.toFixed(1) + " ms";
  if (c.fenced.length) text += ", fenced: " + c.fenced.join(", ");
  if (c.pending.length) text += ", pending: " + c.pending.join(", ");
  return el("span", text, c.complete ? "complete" : "pending");
}

function renderPurges(status) {
  document.getElementById("no-purges").hidden = status.purges.length > 0;
  fill("purges", status.purges.map((p) => row([
    new Date(p.at_ms).toLocaleTimeString(),
    p.via,
    targets(p),
    p.dependents,
    p.answered_ms === null ? "–" : p.answered_ms.toFixed(1) + " ms",
    propagation(p),
  ])));
}

function renderRules(status) {
  document.getElementById("no-rules").hidden = status.rules.length > 0;
  fill("rules", status.rules.map((r) => row([
    r.index,
    r.host === null ? "any" : r.host,
    r.path === null ? "any" : r.path,
    r.hits,
  ])));
}

function render(status) {
  document.getElementById("node-id").textContent = status.node.id;
  document.getElementById("summary").textContent =
    "version " + status.node.version + " · up " + duration(status.node.uptime_s) + " · " +
    (status.node.alone ? "single node" : status.members.length + " members, " +
      status.node.replicas + " replicas per key") + " · " + (status.node.ready ? "ready" : "NOT READY");
  renderMembers(status);
  renderHits(status);
  renderRules(status);
  renderUsage(status);
  renderPurges(status);
  previous = status;
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}

function connection(text, ok) {
  const badge = document.getElementById("connection");
  badge.textContent = text;
  badge.className = "badge " + (ok ? "ok" : "bad");
}

async function poll() {
  try {
    const response = await fetch("/status.json", { cache: "no-store" });
    if (response.ok) {
      render(await response.json());
      connection("live · " + new Date().toLocaleTimeString(), true);
    } else {
      connection("error " + response.status + ": " + (await response.text()), false);
    }
  } catch (e) {
    connection("node unreachable: " + e.message, false);
  }
  setTimeout(poll, POLL_MS);
}

poll();
