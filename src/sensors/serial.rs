//! Serial ports through `tokio-serial` (the only file that uses it): opening a port with a
//! profile's line settings, exclusively, and the errors an installer can act on.

use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_serial::{
    ClearBuffer, DataBits, SerialPort, SerialPortBuilderExt, SerialStream, StopBits,
};

use crate::sensors::profile::{Parity, SerialSettings};

/// What a device task needs of a port: bytes both ways, and a way to drop stale input.
pub trait SerialLine: AsyncRead + AsyncWrite + Unpin + Send + Debug + 'static {
    /// Throws away input not read yet (the rest of a reply that came too late).
    fn discard_input(&mut self);
}

impl SerialLine for SerialStream {
    fn discard_input(&mut self) {
        // Best effort: a port that cannot clear its buffer still works; the reply reader
        // resynchronises on the next terminator or frame.
        let _ = SerialPort::clear(self, ClearBuffer::Input);
    }
}

/// Why a port could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: no such device (unplugged, or a wrong path; prefer /dev/serial/by-id/...)")]
    Absent { path: String },
    #[error("{path}: permission denied (the service user needs the dialout group, and the unit a DeviceAllow= for it)")]
    Denied { path: String },
    #[error("{path}: in use by another program (ports are opened exclusively)")]
    Busy { path: String },
    #[error("{path}: {detail}")]
    Other { path: String, detail: String },
}

/// Opens `path` with the line settings of a profile, exclusively (TIOCEXCL and flock: a second
/// opener, another agent or a stray `screen`, would steal replies).
pub fn open(path: &Path, serial: &SerialSettings) -> Result<SerialStream, OpenError> {
    let shown = path.display().to_string();
    let parity = match serial.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let stop_bits = if serial.stop_bits == 2 {
        StopBits::Two
    } else {
        StopBits::One
    };
    let builder = tokio_serial::new(path.to_string_lossy(), serial.baud)
        .data_bits(DataBits::Eight)
        .parity(parity)
        .stop_bits(stop_bits)
        .timeout(Duration::from_millis(serial.timeout_ms));
    builder.open_native_async().map_err(|e| classify(shown, e))
}

fn classify(path: String, e: tokio_serial::Error) -> OpenError {
    use std::io::ErrorKind as Io;
    use tokio_serial::ErrorKind;
    match e.kind() {
        // serialport reports EBUSY from TIOCEXCL and a held flock as NoDevice.
        ErrorKind::NoDevice => OpenError::Busy { path },
        ErrorKind::Io(Io::NotFound) => OpenError::Absent { path },
        ErrorKind::Io(Io::PermissionDenied) => OpenError::Denied { path },
        // ENXIO/ENODEV: the node exists but its device is gone (a USB adapter mid-unplug).
        _ if e.description.contains("No such device") => OpenError::Absent { path },
        _ => OpenError::Other {
            path,
            detail: e.description,
        },
    }
}
