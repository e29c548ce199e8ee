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
//! All `unsafe` of the crate is in this module (syscalls and the shared ring); every block
//! says why it is sound.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::decode::link::LinkType;
use crate::dissect::Frame;
use crate::time::Timestamp;

/// Largest ring accepted: edge boxes have little memory and the ring is locked in RAM.
pub const MAX_RING_BYTES: u64 = 1 << 30;
/// Longest block timeout accepted: a longer one delays quiet-line packets by as much.
pub const MAX_BLOCK_TIMEOUT_MS: u32 = 10_000;
/// How often the capture thread ([`crate::sources::capture_thread`]) looks at its stop token.
pub const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Geometry of the capture ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSettings {
    /// Bytes per block: a power of two and a multiple of the page size. The largest packet
    /// captured whole is a little less than this.
    pub block_size: u32,
    /// Blocks in the ring. The kernel fills one while we read the others; with one block,
    /// every packet that arrives while we read it is dropped.
    pub block_count: u32,
    /// A sizing hint the kernel checks (`TPACKET_V3` packs packets of any size into a
    /// block): a multiple of 16, at least 80, dividing `block_size`.
    pub frame_size: u32,
    /// A block that is not full is handed over after this long (0: the kernel's default,
    /// about 8 ms), bounding how long a packet of a quiet line waits.
    pub block_timeout_ms: u32,
}

impl Default for RingSettings {
    /// 4 MiB in 16 blocks of 256 KiB (a 64 KiB GRO or loopback packet fits whole): about
    /// 14,000 RTP packets, or 70 ms of 1,000 G.711 calls, of slack for a stalled reader.
    fn default() -> Self {
        RingSettings {
            block_size: 256 * 1024,
            block_count: 16,
            frame_size: 2048,
            block_timeout_ms: 50,
        }
    }
}

/// Ring settings the kernel would refuse or that make no sense, every problem listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid capture ring settings: {}", problems.join("; "))]
pub struct RingSettingsError {
    pub problems: Vec<String>,
}

impl RingSettings {
    /// A ring of about `total_bytes` in blocks of the default size (at least one block).
    pub fn with_total_bytes(total_bytes: u64) -> Self {
        let default = RingSettings::default();
        let blocks = (total_bytes / u64::from(default.block_size)).clamp(1, u64::from(u32::MAX));
        RingSettings {
            block_count: blocks as u32,
            ..default
        }
    }

    /// Bytes of memory the ring takes.
    pub fn total_bytes(&self) -> u64 {
        u64::from(self.block_size) * u64::from(self.block_count)
    }

    /// Checks the settings against the rules of the kernel (`packet_set_ring`) and ours, for
    /// a machine with pages of `page_size` bytes.
    pub fn validate(&self, page_size: u32) -> Result<(), RingSettingsError> {
        let mut problems = Vec::new();
        let RingSettings {
            block_size,
            block_count,
            frame_size,
            block_timeout_ms,
        } = *self;
        // A non-power-of-two block wastes the rest of the power-of-two pages the kernel
        // allocates for it.
        if !block_size.is_power_of_two() {
            problems.push(format!("block_size {block_size} is not a power of two"));
        }
        if page_size == 0 || block_size % page_size != 0 || block_size < page_size {
            problems.push(format!(
                "block_size {block_size} is not a multiple of the page size {page_size}"
            ));
        }
        if block_count == 0 {
            problems.push("block_count is 0".to_owned());
        }
        let min_frame = TPACKET3_HDRLEN as u32;
        if frame_size < min_frame {
            problems.push(format!(
                "frame_size {frame_size} is below the {min_frame}-byte packet header"
            ));
        }
        if frame_size % TPACKET_ALIGNMENT as u32 != 0 {
            problems.push(format!(
                "frame_size {frame_size} is not a multiple of {TPACKET_ALIGNMENT}"
            ));
        }
        if frame_size > block_size {
            problems.push(format!(
                "frame_size {frame_size} is larger than block_size {block_size}"
            ));
        } else if frame_size != 0 && block_size % frame_size != 0 {
            problems.push(format!(
                "frame_size {frame_size} does not divide block_size {block_size}"
            ));
        }
        if frame_size != 0
            && u64::from(block_size / frame_size) * u64::from(block_count) > u64::from(u32::MAX)
        {
            problems.push("block_count * frames per block overflows".to_owned());
        }
        if self.total_bytes() > MAX_RING_BYTES {
            problems.push(format!(
                "ring of {} bytes is larger than the {MAX_RING_BYTES}-byte maximum",
                self.total_bytes()
            ));
        }
        if block_timeout_ms > MAX_BLOCK_TIMEOUT_MS {
            problems.push(format!(
                "block_timeout_ms {block_timeout_ms} is above {MAX_BLOCK_TIMEOUT_MS}"
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RingSettingsError { problems })
        }
    }
}

/// Which frames the kernel puts into the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureFilter {
    /// IPv4, IPv6, VLAN-tagged and MPLS frames only, filtered in the kernel (classic BPF) so
    /// ARP, LLDP, STP and the like take no room in the ring. Only on Ethernet-framed
    /// interfaces; a raw-IP interface carries nothing else anyway.
    #[default]
    IpOnly,
    /// Every frame.
    All,
}

/// Why live capture failed. Every variant names the interface.
#[derive(Debug, thiserror::Error)]
pub enum LiveCaptureError {
    #[error("capture on {interface}: {source}")]
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
        "capture on {interface}: could not allocate a {bytes}-byte ring ({source}); \
         try a smaller ring"
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
    #[error("capture on {interface}: the interface went down ({source}); reopen it when it is up")]
    InterfaceDown {
        interface: String,
        source: io::Error,
    },
    #[error("capture on {interface}: the interface is gone; reopen it when it is back")]
    InterfaceGone { interface: String },
    #[error("capture on {interface}: {operation}: {source}")]
    Io {
        interface: String,
        operation: &'static str,
        source: io::Error,
    },
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

/// Counters of what this side of the ring did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureCounters {
    /// Packets handed on.
    pub packets: u64,
    /// Bytes handed on (captured lengths, VLAN tags included).
    pub bytes: u64,
    /// Blocks read and handed back.
    pub blocks: u64,
    /// Packets cut by the kernel because they did not fit a block.
    pub truncated: u64,
    /// Packets whose VLAN tag the kernel had stripped and we put back.
    pub vlan_tags_restored: u64,
    /// Outgoing copies on a loopback interface skipped here (the arriving copy is kept).
    pub loopback_duplicates: u64,
    /// Blocks whose headers pointed outside the block; the rest of such a block is skipped.
    pub malformed_blocks: u64,
}

/// One captured packet, borrowing the ring (or the re-tagging buffer) until the callback
/// returns.
#[derive(Debug, Clone, Copy)]
pub struct LivePacket<'a> {
    /// When the kernel received or sent it.
    pub time: Timestamp,
    /// The frame as on the wire, from the link-layer header (cut to the block if larger).
    pub data: &'a [u8],
    /// Length on the wire.
    pub original_len: u32,
    pub link: LinkType,
    /// Sent by this host (as opposed to received).
    pub outgoing: bool,
}

impl<'a> LivePacket<'a> {
    /// True when the kernel kept less than the whole frame.
    pub fn is_truncated(&self) -> bool {
        (self.data.len() as u64) < u64::from(self.original_len)
    }

    /// The packet as a frame of the decode path; `number` counts frames since open.
    pub fn frame(&self, number: u64) -> Frame<'a> {
        Frame {
            number,
            time: self.time,
            link: self.link,
            data: self.data,
        }
    }
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
        if filter == CaptureFilter::IpOnly && link == LinkType::Ethernet {
            sys::attach_filter(&fd, &ip_only_program())
                .map_err(|e| io_err("SO_ATTACH_FILTER", e))?;
        }
        let ring = Ring::new(&fd, settings).map_err(|source| match source.raw_os_error() {
            Some(libc::ENOMEM) | Some(libc::ENOBUFS) => LiveCaptureError::RingAllocation {
                interface: name.clone(),
                bytes: settings.total_bytes(),
                source,
            },
            _ => io_err("PACKET_RX_RING", source),
        })?;
        sys::bind(&fd, ifindex).map_err(|e| io_err("bind", e))?;
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
        })
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

// ---- Ring layout (linux/if_packet.h), checked against libc's definitions at compile time.

const TPACKET_V3: libc::c_int = 2;
/// `linux/if_arp.h`; not in libc.
const ARPHRD_RAWIP: u16 = 519;
const TPACKET_ALIGNMENT: usize = libc::TPACKET_ALIGNMENT;
const TPACKET3_HDRLEN: usize = libc::TPACKET3_HDRLEN;
/// `struct tpacket_block_desc`: the block header. `hdr.bh1` (`tpacket_hdr_v1`) starts at 8.
const BLOCK_HDR: usize = offset_of!(libc::tpacket_block_desc, hdr);
const BLOCK_STATUS: usize = BLOCK_HDR + offset_of!(libc::tpacket_hdr_v1, block_status);
const BLOCK_NUM_PKTS: usize = BLOCK_HDR + offset_of!(libc::tpacket_hdr_v1, num_pkts);
const BLOCK_FIRST_PKT: usize = BLOCK_HDR + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt);
/// `struct tpacket3_hdr`: the packet header.
const PKT_NEXT: usize = offset_of!(libc::tpacket3_hdr, tp_next_offset);
const PKT_SEC: usize = offset_of!(libc::tpacket3_hdr, tp_sec);
const PKT_NSEC: usize = offset_of!(libc::tpacket3_hdr, tp_nsec);
const PKT_SNAPLEN: usize = offset_of!(libc::tpacket3_hdr, tp_snaplen);
const PKT_LEN: usize = offset_of!(libc::tpacket3_hdr, tp_len);
const PKT_STATUS: usize = offset_of!(libc::tpacket3_hdr, tp_status);
const PKT_MAC: usize = offset_of!(libc::tpacket3_hdr, tp_mac);
const PKT_VLAN_TCI: usize =
    offset_of!(libc::tpacket3_hdr, hv1) + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tci);
const PKT_VLAN_TPID: usize =
    offset_of!(libc::tpacket3_hdr, hv1) + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tpid);
/// The `sockaddr_ll` after the packet header, aligned to 16.
const PKT_SLL: usize = TPACKET3_HDRLEN - size_of::<libc::sockaddr_ll>();
const PKT_SLL_PKTTYPE: usize = PKT_SLL + offset_of!(libc::sockaddr_ll, sll_pkttype);

// The offsets of linux/if_packet.h, the same on every architecture (fixed-width fields;
// `seq_num` is `__aligned_u64`, so 32-bit ARM lays the block header out like 64-bit).
const _: () = {
    assert!(BLOCK_STATUS == 8);
    assert!(BLOCK_NUM_PKTS == 12);
    assert!(BLOCK_FIRST_PKT == 16);
    assert!(size_of::<libc::tpacket3_hdr>() == 48);
    assert!(PKT_NEXT == 0 && PKT_SEC == 4 && PKT_NSEC == 8 && PKT_SNAPLEN == 12);
    assert!(PKT_LEN == 16 && PKT_STATUS == 20 && PKT_MAC == 24);
    assert!(PKT_VLAN_TCI == 32 && PKT_VLAN_TPID == 36);
    assert!(PKT_SLL == 48 && PKT_SLL_PKTTYPE == 58);
};

/// Where a block's packets come from.
#[derive(Debug, Clone, Copy)]
struct WalkContext {
    link: LinkType,
    loopback: bool,
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let b = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

/// Hands on every packet of one retired block; returns how many. Pure: the block is bytes,
/// so malformed headers are bounds-checked, not trusted.
fn walk_block(
    block: &[u8],
    context: WalkContext,
    scratch: &mut Vec<u8>,
    counters: &mut CaptureCounters,
    f: &mut impl FnMut(LivePacket<'_>),
) -> usize {
    let (Some(count), Some(first)) = (
        u32_at(block, BLOCK_NUM_PKTS),
        u32_at(block, BLOCK_FIRST_PKT),
    ) else {
        counters.malformed_blocks += 1;
        return 0;
    };
    let mut handed = 0;
    let mut offset = first as usize;
    for index in 0..count {
        let Some(packet) = block.get(offset..) else {
            counters.malformed_blocks += 1;
            break;
        };
        match read_packet(packet, context, scratch, counters) {
            Some(Some(live)) => {
                counters.packets += 1;
                counters.bytes += live.data.len() as u64;
                f(live);
                handed += 1;
            }
            Some(None) => {}
            None => {
                counters.malformed_blocks += 1;
                break;
            }
        }
        let next = u32_at(packet, PKT_NEXT).unwrap_or(0) as usize;
        if next == 0 {
            // The last packet has no next; an earlier one without is damage.
            if index + 1 < count {
                counters.malformed_blocks += 1;
            }
            break;
        }
        offset = offset.saturating_add(next);
    }
    handed
}

/// One packet at the start of `packet`: `None` when its header is out of bounds,
/// `Some(None)` when it is skipped (the outgoing copy on a loopback).
fn read_packet<'a>(
    packet: &'a [u8],
    context: WalkContext,
    scratch: &'a mut Vec<u8>,
    counters: &mut CaptureCounters,
) -> Option<Option<LivePacket<'a>>> {
    let sec = u32_at(packet, PKT_SEC)?;
    let nsec = u32_at(packet, PKT_NSEC)?;
    let snaplen = u32_at(packet, PKT_SNAPLEN)? as usize;
    let len = u32_at(packet, PKT_LEN)?;
    let status = u32_at(packet, PKT_STATUS)?;
    let mac = usize::from(u16_at(packet, PKT_MAC)?);
    let tci = u32_at(packet, PKT_VLAN_TCI)?;
    let tpid = u16_at(packet, PKT_VLAN_TPID)?;
    let pkttype = *packet.get(PKT_SLL_PKTTYPE)?;
    let data = packet.get(mac..mac.checked_add(snaplen)?)?;
    let outgoing = pkttype == libc::PACKET_OUTGOING;
    if outgoing && context.loopback {
        counters.loopback_duplicates += 1;
        return Some(None);
    }
    let time = Timestamp::from_secs_nanos(i64::from(sec), nsec);
    let mut live = LivePacket {
        time,
        data,
        original_len: len,
        link: context.link,
        outgoing,
    };
    if (snaplen as u64) < u64::from(len) {
        counters.truncated += 1;
    }
    // libpcap's test: some drivers leave the VALID bit unset for tag 0 and others the reverse.
    let tagged = status & libc::TP_STATUS_VLAN_VALID != 0 || tci != 0;
    if tagged && context.link == LinkType::Ethernet && data.len() >= 12 {
        let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
            tpid
        } else {
            ETHERTYPE_VLAN
        };
        scratch.clear();
        scratch.extend_from_slice(&data[..12]);
        scratch.extend_from_slice(&tpid.to_be_bytes());
        scratch.extend_from_slice(&(tci as u16).to_be_bytes());
        scratch.extend_from_slice(&data[12..]);
        live.data = scratch.as_slice();
        live.original_len = len.saturating_add(4);
        counters.vlan_tags_restored += 1;
    }
    Some(Some(live))
}

const ETHERTYPE_VLAN: u16 = 0x8100;

/// Classic BPF: accept IPv4, IPv6, 802.1Q, 802.1ad, old QinQ and MPLS frames (by the
/// EtherType at offset 12, which for a tag the kernel stripped is the inner type), drop the
/// rest.
fn ip_only_program() -> Vec<libc::sock_filter> {
    const LDH_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const TYPES: [u32; 7] = [0x0800, 0x86dd, 0x8100, 0x88a8, 0x9100, 0x8847, 0x8848];
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut program = vec![op(LDH_ABS, 0, 0, 12)];
    for (i, ethertype) in TYPES.iter().enumerate() {
        // Jump over the remaining tests and the drop to the accept at the end.
        let to_accept = (TYPES.len() - i) as u8;
        program.push(op(JEQ_K, to_accept, 0, *ethertype));
    }
    program.push(op(RET_K, 0, 0, 0));
    program.push(op(RET_K, 0, 0, u32::MAX));
    program
}

/// The memory-mapped ring.
#[derive(Debug)]
struct Ring {
    base: NonNull<u8>,
    len: usize,
    block_size: usize,
    block_count: u32,
}

// SAFETY: the mapping belongs to this `Ring` alone (it is unmapped on drop, never shared), and
// the kernel's concurrent writes are synchronised through the block status words; moving the
// owner to another thread changes nothing about that.
unsafe impl Send for Ring {}

impl Ring {
    /// Asks the kernel for the ring and maps it.
    fn new(fd: &OwnedFd, settings: RingSettings) -> io::Result<Ring> {
        let frames_per_block = settings.block_size / settings.frame_size.max(1);
        let request = libc::tpacket_req3 {
            tp_block_size: settings.block_size,
            tp_block_nr: settings.block_count,
            tp_frame_size: settings.frame_size,
            tp_frame_nr: frames_per_block.saturating_mul(settings.block_count),
            tp_retire_blk_tov: settings.block_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        sys::set(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &request)?;
        let len = usize::try_from(settings.total_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let base = sys::map(fd, len)?;
        Ok(Ring {
            base,
            len,
            block_size: settings.block_size as usize,
            block_count: settings.block_count,
        })
    }

    fn status(&self, block: u32) -> &AtomicU32 {
        let offset = block as usize * self.block_size + BLOCK_STATUS;
        debug_assert!(block < self.block_count && offset + 4 <= self.len);
        // SAFETY: `block < block_count`, so the word lies inside the mapping (blocks are at
        // least a page); blocks start page-aligned and the offset is 8, so it is aligned for a
        // u32. The kernel writes it concurrently, which is why it is only ever accessed
        // atomically; the reference lives no longer than `&self`, and so the mapping.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast::<u32>()) }
    }

    /// True when the kernel has handed the block to us. Acquire: the kernel's writes to the
    /// block happen before it publishes the status, so they are visible after this load.
    fn ready(&self, block: u32) -> bool {
        self.status(block).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// Lends the bytes of a block the kernel has handed to us.
    fn with_block<R>(&self, block: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        debug_assert!(self.ready(block));
        let offset = block as usize * self.block_size;
        // SAFETY: the range is inside the mapping (`block < block_count`). The kernel does not
        // write a block whose status is TP_STATUS_USER until we set it back to
        // TP_STATUS_KERNEL in `release`, which takes `&self` only after this borrow (confined
        // to `f`) has ended, so the bytes do not change while the slice exists.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset), self.block_size) };
        f(bytes)
    }

    /// Hands a block back to the kernel. Release: our reads of it happen before the kernel
    /// may overwrite it.
    fn release(&self, block: u32) {
        self.status(block)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        sys::unmap(self.base, self.len);
    }
}

/// Thin wrappers of the system calls: each unsafe block in one place with its reason.
mod sys {
    use std::ffi::CString;
    use std::io;
    use std::mem::size_of;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::ptr::NonNull;
    use std::time::Duration;

    fn check(result: libc::c_int) -> io::Result<libc::c_int> {
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    }

    pub(super) fn page_size() -> u32 {
        // SAFETY: sysconf reads a configuration value; no memory is passed.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u32::try_from(size).unwrap_or(4096)
    }

    /// The index of an interface in this thread's network namespace.
    pub(super) fn if_index(name: &str) -> Option<libc::c_uint> {
        let name = CString::new(name).ok()?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call, which only reads
        // it.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        (index != 0).then_some(index)
    }

    /// An AF_PACKET raw socket receiving nothing until bound.
    pub(super) fn packet_socket() -> io::Result<OwnedFd> {
        // SAFETY: socket takes no pointers.
        let fd = check(unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: `fd` was just returned by socket, is open, and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The `ARPHRD_*` type of an interface.
    pub(super) fn hardware_type(fd: &OwnedFd, name: &str) -> io::Result<u16> {
        // SAFETY: ifreq is plain old data (integers, arrays, a union of those); all zeroes is
        // a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        let bytes = name.as_bytes();
        if bytes.len() >= request.ifr_name.len() {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        for (to, from) in request.ifr_name.iter_mut().zip(bytes) {
            *to = *from as libc::c_char;
        }
        // SAFETY: SIOCGIFHWADDR reads the NUL-terminated name (zeroed above past the name)
        // and writes a sockaddr into the ifreq, which is ours and large enough.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) })?;
        // SAFETY: after SIOCGIFHWADDR succeeded the kernel has written `ifru_hwaddr`, the
        // union member read here.
        Ok(unsafe { request.ifr_ifru.ifru_hwaddr.sa_family })
    }

    /// setsockopt with a value of type `T` (a `#[repr(C)]` struct of the kernel ABI).
    pub(super) fn set<T>(
        fd: &OwnedFd,
        level: libc::c_int,
        name: libc::c_int,
        value: &T,
    ) -> io::Result<()> {
        // SAFETY: the pointer and length describe `value`, borrowed for the call; the kernel
        // only reads that many bytes.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                size_of::<T>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    pub(super) fn set_int(
        fd: &OwnedFd,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        set(fd, level, name, &value)
    }

    pub(super) fn attach_filter(fd: &OwnedFd, program: &[libc::sock_filter]) -> io::Result<()> {
        let fprog = libc::sock_fprog {
            len: program.len() as libc::c_ushort,
            // The kernel copies the program and never writes through this pointer.
            filter: program.as_ptr().cast_mut(),
        };
        set(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
    }

    pub(super) fn bind(fd: &OwnedFd, ifindex: libc::c_uint) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as libc::c_ushort;
        address.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        address.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: the pointer and length describe `address`, borrowed for the call.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    pub(super) fn promiscuous(fd: &OwnedFd, ifindex: libc::c_uint) -> io::Result<()> {
        let request = libc::packet_mreq {
            mr_ifindex: ifindex as libc::c_int,
            mr_type: libc::PACKET_MR_PROMISC as libc::c_ushort,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        set(fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &request)
    }

    /// Maps the ring set up with PACKET_RX_RING.
    pub(super) fn map(fd: &OwnedFd, len: usize) -> io::Result<NonNull<u8>> {
        // SAFETY: a fresh shared mapping at an address of the kernel's choosing; it overlaps
        // nothing of ours. MAP_LOCKED is not asked for: the kernel's ring pages are not
        // swappable anyway.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(address.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
    }

    pub(super) fn unmap(base: NonNull<u8>, len: usize) {
        // SAFETY: `base` and `len` are exactly a mapping made by `map`, unmapped once (from
        // `Ring::drop`), after which nothing refers to it (block borrows cannot outlive the
        // ring).
        unsafe {
            libc::munmap(base.as_ptr().cast(), len);
        }
    }

    /// Waits for the socket to be readable or in error; returns the events (0 on timeout or
    /// a signal).
    pub(super) fn poll_in(fd: &OwnedFd, timeout: Duration) -> io::Result<libc::c_short> {
        let mut entry = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLERR,
            revents: 0,
        };
        // Round up, so a sub-millisecond timeout does not turn into a busy loop.
        let millis = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one pollfd, ours, borrowed for the call.
        match check(unsafe { libc::poll(&mut entry, 1, millis) }) {
            Ok(_) => Ok(entry.revents),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Takes the error pending on the socket (SO_ERROR), if any.
    pub(super) fn socket_error(fd: &OwnedFd) -> io::Result<Option<io::Error>> {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the pointers describe `value` and `len`, ours, which the kernel fills.
        check(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        Ok((value != 0).then(|| io::Error::from_raw_os_error(value)))
    }

    /// The kernel's counters since the last read (the read resets them).
    pub(super) fn packet_statistics(fd: &OwnedFd) -> io::Result<libc::tpacket_stats_v3> {
        let mut stats = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: the pointers describe `stats` and `len`, ours; the kernel writes at most
        // `len` bytes.
        check(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        })?;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u32 = 4096;

    #[test]
    fn default_ring_is_valid_and_4_mib() {
        let settings = RingSettings::default();
        assert_eq!(settings.validate(PAGE), Ok(()));
        assert_eq!(settings.total_bytes(), 4 << 20);
        assert_eq!(
            RingSettings::with_total_bytes(64 << 20).total_bytes(),
            64 << 20
        );
        assert_eq!(RingSettings::with_total_bytes(1).block_count, 1);
    }

    #[test]
    fn bad_ring_settings_list_every_problem() {
        let settings = RingSettings {
            block_size: 3000,
            block_count: 0,
            frame_size: 44,
            block_timeout_ms: 60_000,
        };
        let error = settings.validate(PAGE).unwrap_err();
        let text = error.to_string();
        for expected in [
            "not a power of two",
            "page size",
            "block_count is 0",
            "below the 68-byte",
            "not a multiple of 16",
            "does not divide",
            "block_timeout_ms",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from {text}");
        }
        let huge = RingSettings::with_total_bytes(4 << 30);
        assert!(huge
            .validate(PAGE)
            .unwrap_err()
            .to_string()
            .contains("maximum"));
        // A 64 KiB-page kernel (some aarch64 distributions) needs bigger blocks.
        let small = RingSettings {
            block_size: 16 * 1024,
            ..RingSettings::default()
        };
        assert_eq!(small.validate(PAGE), Ok(()));
        assert!(small.validate(65_536).is_err());
    }

    /// A packet header as the kernel writes it, followed by its frame.
    struct Fake {
        sec: u32,
        nsec: u32,
        len: u32,
        status: u32,
        tci: u32,
        tpid: u16,
        pkttype: u8,
        frame: Vec<u8>,
    }

    fn fake(frame: &[u8]) -> Fake {
        Fake {
            sec: 1_767_225_600,
            nsec: 5,
            len: frame.len() as u32,
            status: libc::TP_STATUS_USER,
            tci: 0,
            tpid: 0,
            pkttype: libc::PACKET_HOST,
            frame: frame.to_vec(),
        }
    }

    fn put32(block: &mut [u8], at: usize, value: u32) {
        block[at..at + 4].copy_from_slice(&value.to_ne_bytes());
    }

    /// Lays packets out in a block the way `tpacket_rcv` does.
    fn block_of(packets: &[Fake]) -> Vec<u8> {
        let mut block = vec![0u8; 8192];
        let first = 48;
        put32(&mut block, BLOCK_STATUS, libc::TP_STATUS_USER);
        put32(&mut block, BLOCK_NUM_PKTS, packets.len() as u32);
        put32(&mut block, BLOCK_FIRST_PKT, first as u32);
        let mut at = first;
        for (i, p) in packets.iter().enumerate() {
            let mac = 80; // TPACKET_ALIGN(TPACKET3_HDRLEN) + alignment of the IP header
            let size = (mac + p.frame.len()).next_multiple_of(16);
            let next = if i + 1 == packets.len() { 0 } else { size };
            put32(&mut block, at + PKT_NEXT, next as u32);
            put32(&mut block, at + PKT_SEC, p.sec);
            put32(&mut block, at + PKT_NSEC, p.nsec);
            put32(&mut block, at + PKT_SNAPLEN, p.frame.len() as u32);
            put32(&mut block, at + PKT_LEN, p.len);
            put32(&mut block, at + PKT_STATUS, p.status);
            block[at + PKT_MAC..at + PKT_MAC + 2].copy_from_slice(&(mac as u16).to_ne_bytes());
            put32(&mut block, at + PKT_VLAN_TCI, p.tci);
            block[at + PKT_VLAN_TPID..at + PKT_VLAN_TPID + 2]
                .copy_from_slice(&p.tpid.to_ne_bytes());
            block[at + PKT_SLL_PKTTYPE] = p.pkttype;
            block[at + mac..at + mac + p.frame.len()].copy_from_slice(&p.frame);
            at += size;
        }
        block
    }

    const ETHERNET: WalkContext = WalkContext {
        link: LinkType::Ethernet,
        loopback: false,
    };

    /// Each packet handed on: time, bytes, original length, truncated.
    type Seen = Vec<(Timestamp, Vec<u8>, u32, bool)>;

    fn walk(block: &[u8], context: WalkContext) -> (Seen, CaptureCounters) {
        let mut seen = Vec::new();
        let mut counters = CaptureCounters::default();
        let mut scratch = Vec::new();
        let handed = walk_block(
            block,
            context,
            &mut scratch,
            &mut counters,
            &mut |p: LivePacket<'_>| {
                seen.push((p.time, p.data.to_vec(), p.original_len, p.is_truncated()));
            },
        );
        assert_eq!(handed, seen.len());
        (seen, counters)
    }

    fn ethernet_frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0xaa; 6];
        frame.extend([0xbb; 6]);
        frame.extend(ethertype.to_be_bytes());
        frame.extend(payload);
        frame
    }

    #[test]
    fn packets_come_out_in_order_with_their_times() {
        let a = ethernet_frame(0x0800, b"first");
        let b = ethernet_frame(0x86dd, b"second packet");
        let mut second = fake(&b);
        second.nsec = 999_999_999;
        let (seen, counters) = walk(&block_of(&[fake(&a), second]), ETHERNET);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].1, a);
        assert_eq!(seen[1].1, b);
        assert_eq!(seen[0].0, Timestamp::from_secs_nanos(1_767_225_600, 5));
        assert_eq!(
            seen[1].0,
            Timestamp::from_secs_nanos(1_767_225_600, 999_999_999)
        );
        assert_eq!(counters.packets, 2);
        assert_eq!(counters.bytes, (a.len() + b.len()) as u64);
        assert_eq!(counters.malformed_blocks, 0);
    }

    #[test]
    fn stripped_vlan_tag_is_put_back() {
        let inner = ethernet_frame(0x0800, b"ip packet");
        let mut tagged = fake(&inner);
        tagged.status |= libc::TP_STATUS_VLAN_VALID;
        tagged.tci = 0x2064; // priority 1, VLAN 100
        let mut outer = fake(&inner);
        outer.status |= libc::TP_STATUS_VLAN_VALID | libc::TP_STATUS_VLAN_TPID_VALID;
        outer.tci = 7;
        outer.tpid = 0x88a8;
        let (seen, counters) = walk(&block_of(&[tagged, outer]), ETHERNET);
        let mut expected = inner[..12].to_vec();
        expected.extend([0x81, 0x00, 0x20, 0x64]);
        expected.extend(&inner[12..]);
        assert_eq!(seen[0].1, expected);
        assert_eq!(seen[0].2, inner.len() as u32 + 4);
        assert!(!seen[0].3);
        assert_eq!(&seen[1].1[12..16], &[0x88, 0xa8, 0x00, 0x07]);
        assert_eq!(counters.vlan_tags_restored, 2);
    }

    #[test]
    fn vlan_tag_is_not_invented_on_raw_ip() {
        let mut packet = fake(b"\x45rawip-packet");
        packet.tci = 100;
        let context = WalkContext {
            link: LinkType::RawIp,
            loopback: false,
        };
        let (seen, counters) = walk(&block_of(&[packet]), context);
        assert_eq!(seen[0].1, b"\x45rawip-packet");
        assert_eq!(counters.vlan_tags_restored, 0);
    }

    #[test]
    fn cut_packets_are_flagged() {
        let frame = ethernet_frame(0x0800, &[0; 100]);
        let mut cut = fake(&frame);
        cut.len = 70_000;
        let (seen, counters) = walk(&block_of(&[cut]), ETHERNET);
        assert!(seen[0].3);
        assert_eq!(seen[0].2, 70_000);
        assert_eq!(counters.truncated, 1);
    }

    #[test]
    fn outgoing_copies_are_skipped_on_loopback_only() {
        let frame = ethernet_frame(0x0800, b"x");
        let mut sent = fake(&frame);
        sent.pkttype = libc::PACKET_OUTGOING;
        let block = block_of(&[sent, fake(&frame)]);
        let loopback = WalkContext {
            link: LinkType::Ethernet,
            loopback: true,
        };
        let (seen, counters) = walk(&block, loopback);
        assert_eq!((seen.len(), counters.loopback_duplicates), (1, 1));
        let (seen, counters) = walk(&block, ETHERNET);
        assert_eq!((seen.len(), counters.loopback_duplicates), (2, 0));
    }

    #[test]
    fn headers_pointing_outside_the_block_are_counted_not_trusted() {
        let frame = ethernet_frame(0x0800, b"payload");
        let good = block_of(&[fake(&frame), fake(&frame)]);

        let mut first_outside = good.clone();
        put32(&mut first_outside, BLOCK_FIRST_PKT, 1 << 20);
        let (seen, counters) = walk(&first_outside, ETHERNET);
        assert_eq!((seen.len(), counters.malformed_blocks), (0, 1));

        let mut snaplen_outside = good.clone();
        put32(&mut snaplen_outside, 48 + PKT_SNAPLEN, 9000);
        let (seen, counters) = walk(&snaplen_outside, ETHERNET);
        assert_eq!((seen.len(), counters.malformed_blocks), (0, 1));

        let mut count_too_high = good.clone();
        put32(&mut count_too_high, BLOCK_NUM_PKTS, 1000);
        let (seen, counters) = walk(&count_too_high, ETHERNET);
        assert_eq!((seen.len(), counters.malformed_blocks), (2, 1));

        let (seen, _) = walk(&good[..20], ETHERNET);
        assert!(seen.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_block_bytes_are_walked_without_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            first in 0u32..600,
            count in 0u32..50,
        ) {
            let mut block = bytes;
            block.resize(block.len().max(24), 0);
            put32(&mut block, BLOCK_FIRST_PKT, first);
            put32(&mut block, BLOCK_NUM_PKTS, count);
            let (seen, _) = walk(&block, ETHERNET);
            proptest::prop_assert!(seen.len() <= count as usize);
        }
    }

    /// Runs the classic BPF program on a frame, as far as its instructions go.
    fn bpf_accepts(program: &[libc::sock_filter], frame: &[u8]) -> bool {
        let mut pc = 0;
        let mut a = 0u32;
        loop {
            let i = program[pc];
            match i.code {
                0x28 => match frame.get(i.k as usize..i.k as usize + 2) {
                    Some(b) => a = u32::from(u16::from_be_bytes([b[0], b[1]])),
                    None => return false,
                },
                0x15 => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                0x06 => return i.k != 0,
                other => panic!("unexpected BPF opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn ip_only_filter_keeps_ip_vlan_and_mpls_frames() {
        let program = ip_only_program();
        for kept in [0x0800, 0x86dd, 0x8100, 0x88a8, 0x9100, 0x8847, 0x8848] {
            assert!(
                bpf_accepts(&program, &ethernet_frame(kept, b"x")),
                "{kept:#x}"
            );
        }
        for dropped in [0x0806, 0x88cc, 0x0000, 0xffff] {
            assert!(
                !bpf_accepts(&program, &ethernet_frame(dropped, b"x")),
                "{dropped:#x}"
            );
        }
        assert!(!bpf_accepts(&program, &[0; 10]));
    }

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
