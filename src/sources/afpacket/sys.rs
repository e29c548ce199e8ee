//! Thin wrappers of the system calls: each unsafe block in one place with its reason.

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
    let fd =
        check(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
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

/// Removes the socket's filter (it then takes every frame); no filter is not an error.
pub(super) fn detach_filter(fd: &OwnedFd) -> io::Result<()> {
    match set_int(fd, libc::SOL_SOCKET, libc::SO_DETACH_FILTER, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
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
