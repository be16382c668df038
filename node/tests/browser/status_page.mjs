// Opens a node's status page in headless Chromium (Debian's /usr/bin/chromium) the
// way a person would, and prints what they would see as JSON on stdout.
//
//   node status_page.mjs URL TOKEN SCREENSHOT.png
//
// TOKEN is sent as the HTTP Basic password, as a browser's login prompt would; an
// empty TOKEN opens the page without credentials. The screenshot is the whole page.
import { chromium } from "playwright-core";

const [url, token, screenshot] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

const browser = await chromium.launch({
  executablePath,
  headless: true,
  timeout: 30000,
  // Root in a container needs --no-sandbox; the others stop Chromium calling out to
  // Google's services, which this machine's network refuses.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 900 },
    ...(token ? { httpCredentials: { username: "admin", password: token } } : {}),
  });
  const page = await context.newPage();
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(e.message));
  let response = null;
  const seen = { consoleErrors };
  try {
    response = await page.goto(url, { waitUntil: "load", timeout: 15000 });
  } catch (e) {
    // Headless Chromium has no login prompt to show: it gives up on the challenge.
    // What the prompt guards is read as a plain request would read it.
    seen.navigationError = e.message.split("\n")[0];
    const plain = await context.request.get(url);
    Object.assign(seen, { status: plain.status(), body: await plain.text() });
  }
  if (response) seen.status = response.status();
  if (response && response.ok()) {
    // Live: the first poll has drawn the members, and a later one the interval ratio.
    await page.waitForSelector("#members tbody tr", { timeout: 10000 });
    await page.waitForFunction(() => Number(document.body.dataset.polls) >= 2,
      null, { timeout: 10000 });
    const cells = (selector) => page.$$eval(selector + " tbody tr",
      (rows) => rows.map((r) => Array.from(r.cells, (c) => c.innerText)));
    Object.assign(seen, {
      title: await page.title(),
      nodeId: await page.innerText("#node-id"),
      summary: await page.innerText("#summary"),
      connection: await page.innerText("#connection"),
      members: await cells("#members"),
      hitWindow: await page.innerText("#hit-window"),
      hitTotal: await page.innerText("#hit-total"),
      tierHits: await cells("#tiers-hits"),
      usage: await cells("#usage"),
      purges: await cells("#purges"),
      // Markup smuggled in through a key or tag would have added elements or run.
      scripts: await page.$$eval("script", (s) => s.length),
      images: await page.$$eval("img", (s) => s.length),
      pwned: await page.evaluate(() => window.pwned ?? null),
    });
  } else if (response) {
    seen.body = await page.innerText("body");
  }
  await page.screenshot({ path: screenshot, fullPage: true });
  process.stdout.write(JSON.stringify(seen) + "\n");
} finally {
  await browser.close();
}
