//! Live capture on Linux through an `AF_PACKET` socket with a memory-mapped `TPACKET_V3` ring:
//! no libpcap, so the binary stays self-contained and cross-compiles to the ARM edge boxes.
//!
//! How it works: the kernel fills fixed-size *blocks* of a ring shared with this process; a
//! block is handed over (retired) when it is full or when its timeout expires. We wait with
//! `poll`, walk every retired block, hand each packet on as a [`LivePacket`] borrowing the ring
//! memory, and give the block back. No packet is copied, except a VLAN-tagged one (below).
//!
//! What it promises:
//! - **Every direction, exactly one copy per packet.** Packets the host sends are kept, not
//!   only those it receives: a tap on a SPAN port sees both anyway, and on an agent running on
//!   the PBX itself the sent half of every call is outgoing. On a loopback interface the kernel
//!   shows every packet twice (once leaving, once arriving); there the leaving copy is dropped
//!   (in the kernel with `PACKET_IGNORE_OUTGOING` where it has it, else here), which is also
//!   what libpcap does.
//! - **The same bytes a pcap file would hold.** The kernel strips the outer 802.1Q/802.1ad tag
//!   into the packet's metadata; it is put back (into a scratch buffer owned by the capture) so
//!   the decode path sees the frame as it was on the wire. Frames longer than a block are cut
//!   by the kernel; [`LivePacket::is_truncated`] says so.
//! - **Capture loss is measured.** [`LiveCapture::stats`] reads the kernel's counters of
//!   packets dropped because the ring was full. That is loss *in this host*, distinct from
//!   network loss, which the media analysis measures from RTP sequence numbers.
//! - **Bounded.** The ring is allocated once at open ([`RingSettings`], 4 MiB by default); the
//!   only other buffer is one frame of scratch for re-tagging.
//! - **No panics on what the kernel hands over.** Block and packet headers are read through
//!   bounds-checked slices; a header that points outside its block ends the walk of that block
//!   and is counted in [`CaptureCounters::malformed_blocks`].
//!
//! All `unsafe` of the crate is in two private submodules of this one: `sys` (the system
//! calls) and `ring` (the shared memory); every block says why it is sound. The rest is safe
//! code: `settings` (ring geometry), `walk` (the pure block walker, public as [`walk_block`]
//! for its fuzz target), `filter` (the kernel filter) and the capture itself, here.

mod dedup;
mod filter;
#[allow(unsafe_code)]
mod ring;
mod settings;
#[allow(unsafe_code)]
mod sys;
mod walk;

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::decode::link::LinkType;

pub use dedup::{Fingerprint, Fingerprints};
use filter::{drop_all_program, ip_only_program};
use ring::Ring;
pub use settings::{
    CaptureFilter, RingSettings, RingSettingsError, MAX_BLOCK_TIMEOUT_MS, MAX_RING_BYTES,
};
pub use walk::{walk_block, CaptureCounters, LivePacket, WalkContext};

/// How often the capture thread ([`crate::sources::capture_thread`]) looks at its stop token.
pub const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Why live capture failed. Every variant names the interface.
#[derive(Debug, thiserror::Error)]
pub enum LiveCaptureError {
    #[error("capture on {interface}")]
    InvalidSettings {
        interface: String,
        source: RingSettingsError,
    },
    #[error("capture on {interface}: no such network interface")]
    InterfaceNotFound { interface: String },
    #[error(
        "capture on {interface}: permission denied ({operation}); live capture needs \
         CAP_NET_RAW (run as root, or `setcap cap_net_raw+ep` on the binary)"
    )]
    PermissionDenied {
        interface: String,
        operation: &'static str,
    },
    #[error(
        "capture on {interface}: could not allocate a {bytes}-byte ring (try a smaller \
         one)"
    )]
    RingAllocation {
        interface: String,
        bytes: u64,
        source: io::Error,
    },
    #[error(
        "capture on {interface}: link type {arphrd} (ARPHRD) is not supported; \
         Ethernet, loopback and raw-IP interfaces are"
    )]
    UnsupportedLinkType { interface: String, arphrd: u16 },
    #[error("capture on {interface}: the interface went down; reopen it when it is up")]
    InterfaceDown {
        interface: String,
        source: io::Error,
    },
    #[error("capture on {interface}: the interface is gone; reopen it when it is back")]
    InterfaceGone { interface: String },
    #[error("capture on {interface}: {operation}")]
    Io {
        interface: String,
        operation: &'static str,
        source: io::Error,
    },
}

/// A `PACKET_FANOUT` group: the sockets of one interface that share its packets, flow by
/// flow (`PACKET_FANOUT_HASH`), one capture thread each. The id is the group's name in the
/// network namespace; the sockets of one group must agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    pub group: u16,
}

/// The kernel's counters of the socket, accumulated since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    /// Packets that passed the filter, including those dropped.
    pub packets: u64,
    /// Packets dropped because the ring was full: capture loss in this host, not network
    /// loss (which the media analysis counts from RTP sequence numbers).
    pub drops: u64,
    /// Times the kernel froze the ring because every block was still being read.
    pub freeze_queue: u64,
}

/// Where a capture thread hands its packets.
pub trait PacketSink {
    fn packet(&mut self, packet: LivePacket<'_>);

    /// Called after every wait for packets, also when none came, at least every
    /// [`STOP_CHECK_INTERVAL`]: the place to move time forward on a quiet line.
    fn batch_end(&mut self) {}
}

/// A closure takes packets only.
impl<F: FnMut(LivePacket<'_>)> PacketSink for F {
    fn packet(&mut self, packet: LivePacket<'_>) {
        self(packet)
    }
}

/// An open capture on one interface.
#[derive(Debug)]
pub struct LiveCapture {
    interface: String,
    ifindex: libc::c_uint,
    fd: OwnedFd,
    ring: Ring,
    /// The block to read next; the kernel fills blocks in order.
    current: u32,
    link: LinkType,
    loopback: bool,
    /// Holds a frame whose VLAN tag is put back.
    scratch: Vec<u8>,
    counters: CaptureCounters,
    kernel: KernelStats,
    filter: CaptureFilter,
    settings: RingSettings,
    /// Blocks read by the last [`LiveCapture::next_batch`].
    last_blocks: u32,
}

impl LiveCapture {
    /// Opens a capture of every packet on `interface`, in both directions, keeping IP frames
    /// only ([`CaptureFilter::IpOnly`]). `promiscuous` asks the NIC for frames not addressed
    /// to this host (needed on a port mirror); it is undone when the capture is dropped.
    pub fn open(
        interface: &str,
        settings: RingSettings,
        promiscuous: bool,
    ) -> Result<Self, LiveCaptureError> {
        Self::open_with_filter(interface, settings, promiscuous, CaptureFilter::IpOnly)
    }

    /// [`LiveCapture::open`] with a choice of kernel filter.
    pub fn open_with_filter(
        interface: &str,
        settings: RingSettings,
        promiscuous: bool,
        filter: CaptureFilter,
    ) -> Result<Self, LiveCaptureError> {
        Self::open_with(interface, settings, promiscuous, filter, None)
    }

    /// [`LiveCapture::open_with_filter`], joining the interface's packets with the other
    /// sockets of a [`Fanout`] group when one is given: the kernel then hands each flow to
    /// one member.
    pub fn open_with(
        interface: &str,
        settings: RingSettings,
        promiscuous: bool,
        filter: CaptureFilter,
        fanout: Option<Fanout>,
    ) -> Result<Self, LiveCaptureError> {
        let mut capture = Self::open_held(interface, settings, promiscuous, filter, fanout)?;
        capture.arm()?;
        Ok(capture)
    }

    /// [`LiveCapture::open_with`], *held*: bound and in its fanout group, but its filter
    /// takes no frame until [`LiveCapture::arm`]. A ring that replaces another opens so
    /// (see [`crate::sources::capture_thread`]): every member of a new fanout group joins
    /// before any takes a packet, so the group hands each flow to the same member as the
    /// old one from its first packet.
    pub fn open_held(
        interface: &str,
        settings: RingSettings,
        promiscuous: bool,
        filter: CaptureFilter,
        fanout: Option<Fanout>,
    ) -> Result<Self, LiveCaptureError> {
        let name = interface.to_owned();
        let io_err =
            |operation: &'static str, source: io::Error| classify(interface, operation, source);
        settings.validate(sys::page_size()).map_err(|source| {
            LiveCaptureError::InvalidSettings {
                interface: name.clone(),
                source,
            }
        })?;
        let ifindex =
            sys::if_index(interface).ok_or_else(|| LiveCaptureError::InterfaceNotFound {
                interface: name.clone(),
            })?;
        // Protocol 0 receives nothing until `bind` names one, so nothing lands in the ring
        // before the filter and the ring are in place.
        let fd = sys::packet_socket().map_err(|e| io_err("socket", e))?;
        let arphrd = sys::hardware_type(&fd, interface).map_err(|e| io_err("SIOCGIFHWADDR", e))?;
        let (link, loopback) = link_of(arphrd).ok_or(LiveCaptureError::UnsupportedLinkType {
            interface: name.clone(),
            arphrd,
        })?;
        sys::set_int(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, TPACKET_V3)
            .map_err(|e| io_err("PACKET_VERSION TPACKET_V3", e))?;
        if loopback {
            // Linux 4.20+; on older kernels the duplicate is skipped while walking the ring.
            let _ = sys::set_int(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1);
        }
        // Held until `arm`: protocol 0 receives nothing, but a fanout group takes only a
        // bound socket, and a bound one receives.
        sys::attach_filter(&fd, &drop_all_program()).map_err(|e| io_err("SO_ATTACH_FILTER", e))?;
        // Asks the kernel to stamp every frame once, when it enters the stack
        // (`netstamp_needed`), rather than each socket stamping its copy as it takes it: two
        // sockets of one interface then see one frame with one timestamp, which is what
        // tells a frame both rings hold while one replaces the other (`dedup`). The cost is
        // one clock read per frame, which a packet socket pays anyway without it.
        sys::set_int(&fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
            .map_err(|e| io_err("SO_TIMESTAMPNS", e))?;
        let ring = Ring::new(&fd, settings).map_err(|source| match source.raw_os_error() {
            Some(libc::ENOMEM) | Some(libc::ENOBUFS) => LiveCaptureError::RingAllocation {
                interface: name.clone(),
                bytes: settings.total_bytes(),
                source,
            },
            _ => io_err("PACKET_RX_RING", source),
        })?;
        sys::bind(&fd, ifindex).map_err(|e| io_err("bind", e))?;
        if let Some(Fanout { group }) = fanout {
            // The kernel takes a group only on a bound socket; its hash is symmetric, so
            // both directions of a flow (a TCP stream to reassemble) reach the same member,
            // and every fragment of an IP datagram too (fragments hash on addresses only).
            let value =
                libc::c_int::from(group) | ((libc::PACKET_FANOUT_HASH as libc::c_int) << 16);
            sys::set_int(&fd, libc::SOL_PACKET, libc::PACKET_FANOUT, value)
                .map_err(|e| io_err("PACKET_FANOUT", e))?;
        }
        if promiscuous {
            sys::promiscuous(&fd, ifindex).map_err(|e| io_err("PACKET_ADD_MEMBERSHIP", e))?;
        }
        Ok(LiveCapture {
            interface: name,
            ifindex,
            fd,
            ring,
            current: 0,
            link,
            loopback,
            scratch: Vec::new(),
            counters: CaptureCounters::default(),
            kernel: KernelStats::default(),
            filter,
            settings,
            last_blocks: 0,
        })
    }

    /// Lets the kernel filter of the capture take frames (see [`LiveCapture::open_held`]).
    pub fn arm(&mut self) -> Result<(), LiveCaptureError> {
        let result = if self.filter == CaptureFilter::IpOnly && self.link == LinkType::Ethernet {
            sys::attach_filter(&self.fd, &ip_only_program())
        } else {
            sys::detach_filter(&self.fd)
        };
        result.map_err(|e| classify(&self.interface, "SO_ATTACH_FILTER", e))
    }

    /// The ring's geometry.
    pub fn ring_settings(&self) -> RingSettings {
        self.settings
    }

    /// Blocks the last [`LiveCapture::next_batch`] read: a ring found mostly full.
    pub fn last_batch_blocks(&self) -> u32 {
        self.last_blocks
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The link-layer framing of the interface's packets.
    pub fn link(&self) -> LinkType {
        self.link
    }

    pub fn counters(&self) -> CaptureCounters {
        self.counters
    }

    /// Waits up to `timeout` for packets, hands every packet that is ready to `f`, and
    /// returns how many it handed. `Ok(0)` after a quiet `timeout`, so a loop around this
    /// sees its stop flag at least that often. An interface that goes down or away is an
    /// error, for the supervisor to reopen the capture with backoff.
    pub fn next_batch(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(LivePacket<'_>),
    ) -> Result<usize, LiveCaptureError> {
        if !self.ring.ready(self.current) {
            self.wait(timeout)?;
        }
        let mut handed = 0;
        self.last_blocks = 0;
        // At most one lap: blocks the kernel retires meanwhile wait for the next call.
        for _ in 0..self.ring.block_count {
            if !self.ring.ready(self.current) {
                break;
            }
            let context = WalkContext {
                link: self.link,
                loopback: self.loopback,
            };
            let (ring, scratch, counters) = (&self.ring, &mut self.scratch, &mut self.counters);
            ring.with_block(self.current, |block| {
                handed += walk_block(block, context, scratch, counters, &mut f);
            });
            self.ring.release(self.current);
            self.counters.blocks += 1;
            self.last_blocks += 1;
            self.current = (self.current + 1) % self.ring.block_count;
        }
        Ok(handed)
    }

    /// The kernel's counters, accumulated since open (the kernel resets them on every read).
    pub fn stats(&mut self) -> Result<KernelStats, LiveCaptureError> {
        let delta = sys::packet_statistics(&self.fd)
            .map_err(|e| classify(&self.interface, "PACKET_STATISTICS", e))?;
        self.kernel.packets += u64::from(delta.tp_packets);
        self.kernel.drops += u64::from(delta.tp_drops);
        self.kernel.freeze_queue += u64::from(delta.tp_freeze_q_cnt);
        Ok(self.kernel)
    }

    /// Waits for the current block; an error pending on the socket becomes the result.
    fn wait(&mut self, timeout: Duration) -> Result<(), LiveCaptureError> {
        let events =
            sys::poll_in(&self.fd, timeout).map_err(|e| classify(&self.interface, "poll", e))?;
        // The kernel reports an interface going down once (ENETDOWN); one deleted while down,
        // or deleted and created anew under the same name, leaves the socket silent for good.
        // So a quiet wait also checks that the name still means our interface.
        let gone = || sys::if_index(&self.interface) != Some(self.ifindex);
        if events & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) == 0 {
            return if events == 0 && gone() {
                Err(LiveCaptureError::InterfaceGone {
                    interface: self.interface.clone(),
                })
            } else {
                Ok(())
            };
        }
        let pending =
            sys::socket_error(&self.fd).map_err(|e| classify(&self.interface, "SO_ERROR", e))?;
        match pending {
            _ if gone() => Err(LiveCaptureError::InterfaceGone {
                interface: self.interface.clone(),
            }),
            Some(source) => Err(LiveCaptureError::InterfaceDown {
                interface: self.interface.clone(),
                source,
            }),
            // An error another reader of the socket took: nothing to report.
            None => Ok(()),
        }
    }
}

fn classify(interface: &str, operation: &'static str, source: io::Error) -> LiveCaptureError {
    let interface = interface.to_owned();
    match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => LiveCaptureError::PermissionDenied {
            interface,
            operation,
        },
        Some(libc::ENODEV) | Some(libc::ENXIO) => LiveCaptureError::InterfaceNotFound { interface },
        Some(libc::ENETDOWN) => LiveCaptureError::InterfaceDown { interface, source },
        _ => LiveCaptureError::Io {
            interface,
            operation,
            source,
        },
    }
}

/// Link framing of an interface from its `ARPHRD_*` type, and whether it is a loopback.
fn link_of(arphrd: u16) -> Option<(LinkType, bool)> {
    match arphrd {
        libc::ARPHRD_ETHER | libc::ARPHRD_IEEE802 => Some((LinkType::Ethernet, false)),
        // Linux frames loopback packets as Ethernet with zero MAC addresses.
        libc::ARPHRD_LOOPBACK => Some((LinkType::Ethernet, true)),
        // Devices without a link-layer header (tun, WireGuard, PPP, IP-in-IP and SIT tunnels,
        // `ARPHRD_NONE` and `RAWIP`): a packet socket sees the IP packet itself.
        libc::ARPHRD_NONE
        | ARPHRD_RAWIP
        | libc::ARPHRD_PPP
        | libc::ARPHRD_TUNNEL
        | libc::ARPHRD_TUNNEL6
        | libc::ARPHRD_SIT => Some((LinkType::RawIp, false)),
        _ => None,
    }
}

const TPACKET_V3: libc::c_int = 2;
/// `linux/if_arp.h`; not in libc.
const ARPHRD_RAWIP: u16 = 519;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_types_map_to_link_types() {
        assert_eq!(
            link_of(libc::ARPHRD_ETHER),
            Some((LinkType::Ethernet, false))
        );
        assert_eq!(
            link_of(libc::ARPHRD_LOOPBACK),
            Some((LinkType::Ethernet, true))
        );
        assert_eq!(link_of(libc::ARPHRD_NONE), Some((LinkType::RawIp, false)));
        assert_eq!(link_of(libc::ARPHRD_INFINIBAND), None);
    }

    #[test]
    fn unknown_interface_is_named_in_the_error() {
        let error = LiveCapture::open("tl-no-such0", RingSettings::default(), false).unwrap_err();
        assert!(
            matches!(error, LiveCaptureError::InterfaceNotFound { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "capture on tl-no-such0: no such network interface"
        );
    }
}
