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

/// An I/O error kept as the source of the sensors' cloneable errors ([`PollError`],
/// [`ModbusError`]), so the operating system's reason reaches the log through the error
/// chain instead of being flattened to text. Two are equal when kind and text are.
///
/// [`PollError`]: crate::sensors::session::PollError
/// [`ModbusError`]: crate::sensors::modbus::ModbusError
#[derive(Debug, Clone)]
pub struct IoCause(std::sync::Arc<std::io::Error>);

impl IoCause {
    /// The end of file a tty reads once its device is gone.
    pub fn end_of_file() -> Self {
        IoCause::from(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "end of file",
        ))
    }
}

impl From<std::io::Error> for IoCause {
    fn from(e: std::io::Error) -> Self {
        IoCause(std::sync::Arc::new(e))
    }
}

impl PartialEq for IoCause {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl std::fmt::Display for IoCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for IoCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

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
