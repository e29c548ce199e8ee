//! The ring's geometry and the kernel filter's choice: what a capture is opened with,
//! checked against the kernel's rules before any socket exists.

use super::walk::{TPACKET3_HDRLEN, TPACKET_ALIGNMENT};

/// Largest ring accepted: edge boxes have little memory and the ring is locked in RAM.
pub const MAX_RING_BYTES: u64 = 1 << 30;
/// Longest block timeout accepted: a longer one delays quiet-line packets by as much.
pub const MAX_BLOCK_TIMEOUT_MS: u32 = 10_000;

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
        Self::sized(total_bytes, default.block_size, default.block_timeout_ms)
    }

    /// A ring of about `total_bytes` in blocks of `block_size` (at least one block), the
    /// frame size hint the default. The one place the geometry is computed: the
    /// configuration calls it once and the capture opens what it returns.
    pub fn sized(total_bytes: u64, block_size: u32, block_timeout_ms: u32) -> Self {
        let blocks = (total_bytes / u64::from(block_size.max(1))).clamp(1, u64::from(u32::MAX));
        RingSettings {
            block_size,
            block_count: blocks as u32,
            block_timeout_ms,
            ..RingSettings::default()
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
}
