//! The memory-mapped ring shared with the kernel: the only place that turns its memory into
//! Rust references, each step with the reason it is sound.

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::settings::RingSettings;
use super::sys;
use super::walk::BLOCK_STATUS;

/// The memory-mapped ring.
#[derive(Debug)]
pub(super) struct Ring {
    base: NonNull<u8>,
    len: usize,
    block_size: usize,
    pub(super) block_count: u32,
}

// SAFETY: the mapping belongs to this `Ring` alone (it is unmapped on drop, never shared), and
// the kernel's concurrent writes are synchronised through the block status words; moving the
// owner to another thread changes nothing about that.
unsafe impl Send for Ring {}

impl Ring {
    /// Asks the kernel for the ring and maps it.
    pub(super) fn new(fd: &OwnedFd, settings: RingSettings) -> io::Result<Ring> {
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
    pub(super) fn ready(&self, block: u32) -> bool {
        self.status(block).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// Lends the bytes of a block the kernel has handed to us.
    pub(super) fn with_block<R>(&self, block: u32, f: impl FnOnce(&[u8]) -> R) -> R {
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
    pub(super) fn release(&self, block: u32) {
        self.status(block)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        sys::unmap(self.base, self.len);
    }
}
