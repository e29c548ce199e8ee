// Drives a real headless Chromium (Debian's) with puppeteer-core through the status page's
// *Listen* button, for tests/it/listen.rs. Two supervisors, each in a browser context of its
// own (no shared cookies), log in through the login form like a person would; then the
// driver prints {"step":"ready"} and reads the call (as the page shows it) from stdin, so
// the call starts with both pages open and its recording is not spent on browser start-up.
//
// 1. the viewer (view permission only): the call's row has no Listen button; a WHEP POST
//    made from the page itself (its session cookie, same origin) is refused, and the peer
//    connection it offered receives nothing (checked again at the end). Then the driver
//    prints {"step":"viewer"} and waits for a line on stdin (the Rust test checks the
//    agent's counters meanwhile);
// 2. the listener (listen permission): clicks Listen in the call's row (a real click: the
//    user gesture that lets the page play audio, no autoplay flag), the page loads
//    /whep/listen.js, and getStats() of the page's RTCPeerConnection is sampled while the
//    call plays; then the driver waits for the call to end and for the page to say so.
//
// The page's RTCPeerConnections are found by wrapping the constructor before any page
// script runs (DevTools, not the page). Prints one JSON object last; the test judges it.
//
// Environment: PUPPETEER (the puppeteer-core directory), BASE (http://127.0.0.1:port),
// TOKEN (may listen), VIEWER_TOKEN (may only view),
// USER_DATA (a fresh profile directory), LISTEN_S (seconds to sample), END_WAIT_S.
'use strict';
const puppeteer = require(process.env.PUPPETEER);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');
// Lines from stdin, one at a time.
const waiting = [];
const buffered = [];
let partial = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  partial += chunk;
  let i;
  while ((i = partial.indexOf('\n')) >= 0) {
    const line = partial.slice(0, i).trim();
    partial = partial.slice(i + 1);
    if (waiting.length) waiting.shift()(line); else buffered.push(line);
  }
});
const stdinLine = () => new Promise((resolve) => {
  if (buffered.length) resolve(buffered.shift()); else waiting.push(resolve);
});

// Before any page script: keep every RTCPeerConnection, and every CSP violation.
function instrument() {
  window.__pcs = [];
  window.__csp = [];
  const Original = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Original {
    constructor(...args) {
      super(...args);
      window.__pcs.push(this);
    }
  };
  document.addEventListener('securitypolicyviolation', (e) =>
    window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
}

async function loggedIn(browser, token, errors) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  await page.evaluateOnNewDocument(instrument);
  await page.goto(process.env.BASE + '/login', { waitUntil: 'load' });
  await page.type('#token', token);
  await Promise.all([
    page.waitForNavigation({ waitUntil: 'domcontentloaded' }),
    page.click('#signin'),
  ]);
  await page.waitForFunction(() => Number(document.body.dataset.seq) > 0, { timeout: 15000 });
  return page;
}

// The inbound audio of the page's newest peer connection.
function inbound(page) {
  return page.evaluate(async () => {
    const pc = window.__pcs[window.__pcs.length - 1];
    if (!pc) return null;
    const stats = await pc.getStats();
    let rtp = null;
    const codecs = {};
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') rtp = s;
      if (s.type === 'codec') codecs[s.id] = s.mimeType;
    });
    const audio = document.getElementById('listen-audio');
    return {
      connectionState: pc.connectionState,
      packetsReceived: rtp ? rtp.packetsReceived : 0,
      packetsLost: rtp ? rtp.packetsLost : null,
      audioLevel: rtp ? rtp.audioLevel : null,
      totalAudioEnergy: rtp ? rtp.totalAudioEnergy : null,
      codec: rtp ? codecs[rtp.codecId] : null,
      playing: !audio.paused && audio.srcObject !== null,
    };
  });
}

(async () => {
  const result = { errors: [], viewer_errors: [], samples: [] };
  const browser = await puppeteer.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    userDataDir: process.env.USER_DATA,
    args: [
      '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
    ],
  });
  try {
    const viewer = await loggedIn(browser, process.env.VIEWER_TOKEN, result.viewer_errors);
    const page = await loggedIn(browser, process.env.TOKEN, result.errors);
    say({ step: 'ready' });
    const call = await stdinLine();
    const row = `#calls tbody tr[data-call="${call}"]`;

    // 1. The viewer: the call's row, from the live snapshots.
    await viewer.waitForSelector(row, { timeout: 15000 });
    result.viewer_listen_cell = await viewer.$eval(row, (tr) => tr.cells[5].textContent);
    result.viewer_buttons = await viewer.$$eval('button.listen', (b) => b.length);
    // What the Listen button would do, done by hand from the page: an offer POSTed with the
    // page's session cookie.
    result.viewer_post = await viewer.evaluate(async (callId) => {
      const pc = new RTCPeerConnection();
      pc.addTransceiver('audio', { direction: 'recvonly' });
      await pc.setLocalDescription(await pc.createOffer());
      const r = await fetch('/whep/calls/' + encodeURIComponent(callId), {
        method: 'POST', headers: { 'Content-Type': 'application/sdp' },
        body: pc.localDescription.sdp, credentials: 'same-origin',
      });
      return { status: r.status, body: (await r.text()).trim(), location: r.headers.get('Location') };
    }, call);
    say({ step: 'viewer' });
    await stdinLine();

    // 2. The listener.
    await page.waitForSelector(row, { timeout: 15000 });
    const button = row + ' button.listen';
    result.button_before = await page.$eval(button, (b) => b.textContent);
    result.listen_script_before = await page.evaluate(() => typeof window.teledgeListen);
    const clicked = Date.now();
    await page.click(button);
    await page.waitForFunction(() => {
      const s = document.getElementById('listen-state').textContent;
      return s === 'listening' || s.startsWith('listen refused') || s.startsWith('live listen');
    }, { timeout: 15000 });
    result.state = await page.$eval('#listen-state', (e) => e.textContent);
    result.connect_ms = Date.now() - clicked;
    result.listen_script_after = await page.evaluate(() => typeof window.teledgeListen);
    result.peer_connections = await page.evaluate(() => window.__pcs.length);
    if (result.state !== 'listening') return;
    result.button_listening = await page.$eval(button, (b) => b.textContent);
    // Samples while the session lasts (on a loaded machine the call may end sooner).
    const listenS = Number(process.env.LISTEN_S || '4');
    for (let i = 0; i < listenS * 4; i++) {
      await sleep(250);
      const sample = await inbound(page);
      if (sample.connectionState !== 'connected') break;
      result.samples.push(sample);
    }
    // The call ends: the session must end with it, and the page must say so.
    const endWait = Number(process.env.END_WAIT_S || '30') * 1000;
    const t0 = Date.now();
    while (Date.now() - t0 < endWait) {
      const s = await page.evaluate((r) => {
        const pc = window.__pcs[window.__pcs.length - 1];
        const t = pc.getReceivers()[0] && pc.getReceivers()[0].transport;
        return {
          pc: pc.connectionState,
          ice: pc.iceConnectionState,
          dtls: t ? t.state : null,
          text: document.getElementById('listen-state').textContent,
          row: document.querySelector(r) !== null,
        };
      }, row);
      const now = Date.now() - t0;
      if (!s.row && result.row_gone_after_ms === undefined) result.row_gone_after_ms = now;
      if (s.text !== 'listening' && result.page_said_after_ms === undefined) {
        result.page_said_after_ms = now;
      }
      result.end = s;
      if (s.pc !== 'connected' && s.text !== 'listening' && !s.row) break;
      await sleep(200);
    }
    result.ended_after_ms = Date.now() - t0;
    result.row_gone = await page.$(row) === null;
    result.buttons_after = await page.$$eval('button.listen', (b) => b.length);
    result.last = await inbound(page);
    result.csp = await page.evaluate(() => window.__csp);
    // The viewer's refused peer connection, all call long: nothing.
    result.viewer_media = await inbound(viewer);
    result.viewer_csp = await viewer.evaluate(() => window.__csp);
  } catch (e) {
    result.errors.push('driver: ' + String(e && e.stack || e));
  } finally {
    await browser.close();
    say(result);
  }
})();
