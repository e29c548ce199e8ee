//! `teledge-whepload`: live-listen load for the benchmark (`scripts/bench-listen.sh`).
//!
//! Opens one WHEP session (webrtc-rs, a recvonly audio offer, `Authorization: Bearer`) per
//! Call-ID given, keeps them all for `--seconds`, counts the RTP packets each receives, then
//! DELETEs them. One line of JSON at the end: sessions asked for, created, connected, and
//! packets received (total, least and most per session).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use tokio::sync::watch;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    SettingEngineBuilder,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

#[derive(Parser, Debug)]
struct Args {
    /// The agent's HTTP port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// A supervisor token with the listen permission.
    #[arg(long)]
    token: String,
    /// Call-IDs to listen to, comma-separated (one session each).
    #[arg(long, value_delimiter = ',')]
    calls: Vec<String>,
    /// How long to keep listening.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

struct Handler {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
    packets: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let packets = Arc::clone(&self.packets);
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(_) => {
                        packets.fetch_add(1, Ordering::Relaxed);
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

/// One HTTP/1.1 request: status, head, body.
fn request(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_owned(), body.to_owned()))
}

struct Session {
    pc: Arc<dyn PeerConnection>,
    state: watch::Receiver<RTCPeerConnectionState>,
    packets: Arc<AtomicU64>,
    location: String,
}

async fn open(port: u16, token: &str, call: &str) -> Result<Session> {
    let mut media = MediaEngine::default();
    for (mime, pt) in [("audio/PCMU", 0), ("audio/PCMA", 8)] {
        media.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime.to_owned(),
                    clock_rate: 8000,
                    channels: 0,
                    sdp_fmtp_line: String::new(),
                    rtcp_feedback: vec![],
                },
                payload_type: pt,
            },
            RtpCodecKind::Audio,
        )?;
    }
    let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
    let (gathered_tx, mut gathered) = watch::channel(false);
    let packets = Arc::new(AtomicU64::new(0));
    let pc: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                    .build(),
            )
            .with_handler(Arc::new(Handler {
                state: state_tx,
                gathered: gathered_tx,
                packets: Arc::clone(&packets),
            }))
            .with_udp_addrs(vec!["127.0.0.1:0"])
            .build()
            .await?,
    );
    pc.add_transceiver_from_kind(
        RtpCodecKind::Audio,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            streams: vec![],
            send_encodings: vec![],
        }),
    )
    .await?;
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    tokio::time::timeout(Duration::from_secs(5), gathered.wait_for(|g| *g))
        .await
        .context("ICE gathering")??;
    let offer = pc.local_description().await.context("no offer")?.sdp;
    let path = format!("/whep/calls/{}", call.replace('@', "%40"));
    let token = token.to_owned();
    let (status, head, body) =
        tokio::task::spawn_blocking(move || request(port, "POST", &path, &token, &offer)).await??;
    if status != 201 {
        bail!("POST for {call}: {status} {body}");
    }
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .context("no Location")?
        .trim()
        .to_owned();
    pc.set_remote_description(RTCSessionDescription::answer(body)?)
        .await?;
    Ok(Session {
        pc,
        state,
        packets,
        location,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut sessions = Vec::new();
        let mut failed = Vec::new();
        for call in &args.calls {
            match open(args.port, &args.token, call).await {
                Ok(s) => sessions.push(s),
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
        let mut connected = 0;
        for s in &mut sessions {
            let ok = tokio::time::timeout(
                Duration::from_secs(5),
                s.state
                    .wait_for(|st| *st == RTCPeerConnectionState::Connected),
            )
            .await;
            if matches!(ok, Ok(Ok(_))) {
                connected += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let counts: Vec<u64> = sessions
            .iter()
            .map(|s| s.packets.load(Ordering::Relaxed))
            .collect();
        for s in &sessions {
            let (port, token, location) = (args.port, args.token.clone(), s.location.clone());
            let _ =
                tokio::task::spawn_blocking(move || request(port, "DELETE", &location, &token, ""))
                    .await;
            let _ = s.pc.close().await;
        }
        println!(
            "{}",
            serde_json::json!({
                "asked": args.calls.len(),
                "created": sessions.len(),
                "connected": connected,
                "failed": failed,
                "seconds": args.seconds,
                "packets_total": counts.iter().sum::<u64>(),
                "packets_min": counts.iter().min().copied().unwrap_or(0),
                "packets_max": counts.iter().max().copied().unwrap_or(0),
            })
        );
        Ok(())
    })
}
