// teledge live listen: a WHEP client (draft-ietf-wish-whep) for the browser.
//
//   const s = await teledgeListen(callId, { audio: audioElement, token: optionalBearer,
//                                           onended: (why) => … });
//   s.pc (the RTCPeerConnection), s.location (the session URL), await s.stop()
//
// `onended` is called once when the session ends without stop(): the agent ended it (the
// call ended: its DTLS transport closes at once, well before the browser's ICE checks would
// notice the silence) or the connection failed. The peer connection is closed then.
//
// One recvonly audio transceiver; no ICE servers (teledge answers with host candidates on
// the LAN); the offer is sent once gathering is done or after a second (teledge needs no
// client candidates: the browser's checks reach it). Without a token the status page's
// session cookie authenticates (same origin). On player.html it wires the form.
'use strict';

async function teledgeListen(callId, opts) {
  const options = opts || {};
  const pc = new RTCPeerConnection();
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.ontrack = (event) => {
    if (options.audio) {
      options.audio.srcObject = event.streams[0] || new MediaStream([event.track]);
      options.audio.play().catch(() => {});
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') { resolve(); return; }
    const done = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, 1000);
  });
  const headers = { 'Content-Type': 'application/sdp' };
  if (options.token) headers.Authorization = 'Bearer ' + options.token;
  const answer = await fetch('/whep/calls/' + encodeURIComponent(callId), {
    method: 'POST', headers: headers, body: pc.localDescription.sdp,
  });
  if (answer.status !== 201) {
    pc.close();
    const text = await answer.text();
    throw new Error(answer.status + ': ' + text.trim());
  }
  const location = answer.headers.get('Location');
  await pc.setRemoteDescription({ type: 'answer', sdp: await answer.text() });
  let ended = false;
  const end = (why) => {
    if (ended) return;
    ended = true;
    pc.close();
    if (options.audio) options.audio.srcObject = null;
    if (options.onended) options.onended(why);
  };
  const receiver = pc.getReceivers()[0];
  const dtls = receiver && receiver.transport;
  if (dtls) {
    dtls.addEventListener('statechange', () => {
      if (dtls.state === 'closed') end('ended by the agent');
      if (dtls.state === 'failed') end('failed');
    });
  }
  pc.addEventListener('connectionstatechange', () => {
    const state = pc.connectionState;
    if (state === 'failed' || state === 'disconnected') end(state);
  });
  const del = {};
  if (options.token) del.Authorization = 'Bearer ' + options.token;
  return {
    pc: pc,
    location: location,
    stop: async () => {
      // A session the agent ended is gone there already (a DELETE would find nothing).
      const open = !ended;
      ended = true;
      pc.close();
      if (options.audio) options.audio.srcObject = null;
      if (open) await fetch(location, { method: 'DELETE', headers: del }).catch(() => {});
    },
  };
}
window.teledgeListen = teledgeListen;

// player.html: the form.
document.addEventListener('DOMContentLoaded', () => {
  const form = document.getElementById('listen-form');
  if (!form) return;
  const state = document.getElementById('state');
  const stopButton = document.getElementById('stop');
  const call = document.getElementById('call');
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get('call')) call.value = hash.get('call');
  let session = null;
  const show = (text) => { state.textContent = text; };
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (session) await session.stop();
    show('connecting');
    try {
      session = await teledgeListen(call.value, {
        audio: document.getElementById('audio'),
        token: document.getElementById('token').value,
        onended: (why) => { show('ended: ' + why); stopButton.disabled = true; },
      });
      window.teledgeSession = session;
      stopButton.disabled = false;
      session.pc.addEventListener('connectionstatechange', () => show(session.pc.connectionState));
      show(session.pc.connectionState);
    } catch (e) {
      show('refused: ' + e.message);
    }
  });
  stopButton.addEventListener('click', async () => {
    if (session) await session.stop();
    session = null;
    stopButton.disabled = true;
    show('stopped');
  });
});
