// Drives a real headless Chromium (Debian's) with puppeteer-core: opens teledge's player
// page, first listens with a wrong token (refused: no peer connection, no media), then with
// the right one, samples getStats() while the call plays, and waits for the session to end
// when the call ends. Once the page is open it prints {"step":"ready"} and reads the call id
// (as the status page shows it) from stdin: the test starts the call then. Prints one JSON
// object last; tests/it/listen.rs judges it.
//
// Environment: PUPPETEER (the puppeteer-core directory), BASE (http://127.0.0.1:port),
// TOKEN (a supervisor token), USER_DATA (a fresh profile directory),
// LISTEN_S (seconds to sample), END_WAIT_S (seconds to wait for the end).
'use strict';
const puppeteer = require(process.env.PUPPETEER);

const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');
// The first line from stdin.
const stdinLine = () => new Promise((resolve) => {
  let text = '';
  process.stdin.setEncoding('utf8');
  const more = (chunk) => {
    text += chunk;
    const i = text.indexOf('\n');
    if (i < 0) return;
    process.stdin.off('data', more);
    process.stdin.pause();
    resolve(text.slice(0, i).trim());
  };
  process.stdin.on('data', more);
});

(async () => {
  const result = { errors: [], samples: [] };
  const browser = await puppeteer.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    userDataDir: process.env.USER_DATA,
    args: [
      '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  try {
    const page = await browser.newPage();
    page.on('pageerror', (e) => result.errors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') result.errors.push(m.text()); });
    await page.goto(process.env.BASE + '/whep/player.html', { waitUntil: 'load' });
    // The page is open: the test starts the call and says which it is.
    say({ step: 'ready' });
    const call = await stdinLine();
    const state = () => page.$eval('#state', (e) => e.textContent);
    const settled = () => page.waitForFunction(() => {
      const s = document.getElementById('state').textContent;
      return s === 'connected' || s === 'failed' || s.startsWith('refused');
    }, { timeout: 15000 });

    // A wrong token.
    await page.type('#call', call);
    await page.type('#token', 'tdg1_not-a-token');
    await page.click('#listen');
    await settled();
    result.wrong_token = await state();
    result.wrong_token_session = await page.evaluate(() => window.teledgeSession !== undefined);

    // The right one.
    await page.$eval('#token', (e) => { e.value = ''; });
    await page.type('#token', process.env.TOKEN);
    const clicked = Date.now();
    await page.click('#listen');
    await settled();
    result.state = await state();
    result.connect_ms = Date.now() - clicked;
    if (result.state !== 'connected') return;
    result.listen_started_ms = Date.now();
    const sample = () => page.evaluate(async () => {
      const pc = window.teledgeSession.pc;
      const stats = await pc.getStats();
      let inbound = null;
      const codecs = {};
      stats.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') inbound = s;
        if (s.type === 'codec') codecs[s.id] = s.mimeType;
      });
      const audio = document.getElementById('audio');
      return inbound && {
        packetsReceived: inbound.packetsReceived,
        packetsLost: inbound.packetsLost,
        audioLevel: inbound.audioLevel,
        totalAudioEnergy: inbound.totalAudioEnergy,
        codec: codecs[inbound.codecId],
        connectionState: pc.connectionState,
        playing: !audio.paused,
      };
    });
    const listenS = Number(process.env.LISTEN_S || '4');
    for (let i = 0; i < listenS * 4; i++) {
      await new Promise((r) => setTimeout(r, 250));
      result.samples.push(await sample());
    }
    // The call ends: the session must end with it.
    const endWait = Number(process.env.END_WAIT_S || '30') * 1000;
    const t0 = Date.now();
    while (Date.now() - t0 < endWait) {
      const s = await page.evaluate(() => window.teledgeSession.pc.connectionState);
      if (s !== 'connected') { result.ended_state = s; result.ended_text = await state(); break; }
      await new Promise((r) => setTimeout(r, 200));
    }
    result.ended_at_ms = Date.now();
    result.last = await sample();
  } catch (e) {
    result.errors.push('driver: ' + String(e));
  } finally {
    await browser.close();
    say(result);
  }
})();
