// Drives Debian's Chromium (headless) through the status page with puppeteer-core, for
// tests/it/status_browser.rs. Prints one JSON line per step on stdout; the last line is
// the summary the Rust test checks. Environment:
//   TELEDGE_URL         the agent's page, e.g. http://127.0.0.1:9464
//   TELEDGE_TOKEN       a valid supervisor token
//   TELEDGE_SCREENSHOTS directory for status-page.png and status-page-phone.png
//   TELEDGE_PUPPETEER   directory where puppeteer-core is installed (scripts/test.sh)
//   CHROMIUM            the browser (default /usr/bin/chromium)
"use strict";
const path = require("path");
const puppeteer = require(path.join(process.env.TELEDGE_PUPPETEER, "node_modules", "puppeteer-core"));

const url = process.env.TELEDGE_URL;
const token = process.env.TELEDGE_TOKEN;
const shots = process.env.TELEDGE_SCREENSHOTS;
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function row(page) {
  return page.evaluate(() => {
    const tr = document.querySelector("#calls tbody tr");
    if (!tr) return null;
    const cells = [...tr.querySelectorAll("td")].map((td) => td.textContent);
    return {
      seq: Number(document.body.dataset.seq),
      id: tr.dataset.call,
      service: cells[0],
      state: cells[1],
      duration: cells[2],
      forward: cells[3],
      back: cells[4],
      parties: cells[6],
      listen: !!tr.querySelector("button.listen"),
    };
  });
}

(async () => {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
  });
  const summary = { console_errors: [], csp_violations: [], samples: [] };
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1200, height: 800 });
    page.on("console", (m) => { if (m.type() === "error") summary.console_errors.push(m.text()); });
    page.on("pageerror", (e) => summary.console_errors.push(String(e)));
    // Injected by DevTools (not subject to the page's CSP): report any violation.
    await page.evaluateOnNewDocument(() => {
      window.__csp = [];
      document.addEventListener("securitypolicyviolation", (e) =>
        window.__csp.push(e.violatedDirective + " " + e.blockedURI));
    });

    // No session: 401, and the login form.
    const first = await page.goto(url + "/", { waitUntil: "networkidle0" });
    summary.no_token_status = first.status();
    await page.waitForSelector("#token");
    // A wrong token: refused, the form says so, still no page.
    await page.type("#token", token + "x");
    await page.click("#signin");
    await page.waitForSelector("#error:not([hidden])", { timeout: 10000 });
    summary.wrong_token_message = await page.$eval("#error", (e) => e.textContent);
    summary.wrong_token_url = page.url();
    // The right token: the page.
    await page.$eval("#token", (e) => { e.value = ""; });
    await page.type("#token", token);
    const [response] = await Promise.all([
      page.waitForNavigation({ waitUntil: "domcontentloaded" }),
      page.click("#signin"),
    ]);
    summary.login_page_status = response.status();
    await page.waitForFunction(() => Number(document.body.dataset.seq) > 0, { timeout: 10000 });
    summary.cookie_http_only = (await page.cookies()).some((c) => c.name === "teledge_session" && c.httpOnly);
    summary.script_sees_cookie = await page.evaluate(() => document.cookie.includes("teledge_session"));
    summary.calls_before = await page.$$eval("#calls tbody tr", (rows) => rows.length);
    say({ step: "ready" });

    // The call appears (the test places it now), and its figures update.
    await page.waitForSelector("#calls tbody tr", { timeout: 20000 });
    const deadline = Date.now() + 15000;
    let shot = false;
    while (Date.now() < deadline) {
      const r = await row(page);
      if (!r) break;
      summary.samples.push(r);
      if (!shot && r.forward.trim() !== "–" && summary.samples.length >= 3) {
        await page.screenshot({ path: path.join(shots, "status-page.png") });
        await page.setViewport({ width: 390, height: 844, deviceScaleFactor: 2, isMobile: true });
        await sleep(300);
        summary.phone_scroll_width = await page.evaluate(() => document.documentElement.scrollWidth);
        await page.screenshot({ path: path.join(shots, "status-page-phone.png") });
        await page.setViewport({ width: 1200, height: 800 });
        shot = true;
      }
      if (shot && summary.samples.length >= 6) break;
      await sleep(1000);
    }
    summary.screenshot = shot;
    say({ step: "sampled" });
    // The call ends: its row goes.
    await page.waitForFunction(() => document.querySelectorAll("#calls tbody tr").length === 0,
      { timeout: 40000 });
    summary.call_gone = true;
    summary.csp_violations = await page.evaluate(() => window.__csp);
    summary.final_seq = await page.evaluate(() => Number(document.body.dataset.seq));
  } catch (e) {
    summary.error = String(e && e.stack || e);
  } finally {
    await browser.close();
  }
  say({ step: "summary", summary });
})();
