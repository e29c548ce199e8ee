//! Modbus RTU through `tokio-modbus` (the only file that uses it).
//!
//! tokio-modbus does the framing and CRC; what it does not do is say *why* a request went
//! unanswered: on a bad CRC its decoder drops bytes and waits for more, so the caller only sees
//! a timeout (tokio-modbus#12, #113: it can wait forever without one). To report bad CRCs and
//! garbage as such, the transport is wrapped in a [`Tap`] that keeps the bytes received during
//! the transaction; after a timeout [`classify_silence`] looks at them.
//!
//! Registers of a profile are read in as few requests as possible: readings of the same
//! function with contiguous registers share one request (the XY-MD02 reference frame reads
//! temperature and humidity together: `01 04 00 01 00 02 20 0B`).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_modbus::client::{rtu, Context, Reader};
use tokio_modbus::{ExceptionCode, Slave};

use crate::sensors::profile::{DataType, Reading, Source};
use crate::sensors::serial::{IoCause, SerialLine};

/// Bytes of a transaction kept for diagnosis (a Modbus RTU frame is at most 256 bytes).
const TAP_LIMIT: usize = 512;
/// Registers per request (the protocol's limit is 125).
const MAX_REGISTERS_PER_REQUEST: u16 = 125;

/// Why a Modbus transaction failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModbusError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("reply with a bad CRC ({0} bytes)")]
    BadCrc(usize),
    #[error("unrecognisable reply ({0} bytes of garbage)")]
    Garbage(usize),
    #[error("device answered with Modbus exception {code:#04x} ({name})")]
    Exception { code: u8, name: &'static str },
    #[error("reply did not match the request: {0}")]
    Mismatch(String),
    #[error("port failed")]
    Io(#[source] IoCause),
}

/// A transport shared between successive tokio-modbus contexts, recording what it reads.
///
/// A context owns its transport and cannot give it back; after a failed transaction its
/// decoder may hold half a frame, so a fresh context is made over the same port instead.
#[derive(Debug)]
pub struct Tap<T> {
    port: Arc<Mutex<T>>,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl<T> Clone for Tap<T> {
    fn clone(&self) -> Self {
        Tap {
            port: Arc::clone(&self.port),
            seen: Arc::clone(&self.seen),
        }
    }
}

impl<T> Tap<T> {
    pub fn new(port: T) -> Self {
        Tap {
            port: Arc::new(Mutex::new(port)),
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn lock_port(&self) -> io::Result<std::sync::MutexGuard<'_, T>> {
        self.port
            .lock()
            .map_err(|_| io::Error::other("serial port lock poisoned"))
    }

    /// Runs `f` on the port itself (to clear buffers, say).
    pub fn with_port<R>(&self, f: impl FnOnce(&mut T) -> R) -> io::Result<R> {
        Ok(f(&mut *self.lock_port()?))
    }

    /// Takes the bytes read since the last call.
    pub fn take_seen(&self) -> Vec<u8> {
        self.seen
            .lock()
            .map(|mut seen| std::mem::take(&mut *seen))
            .unwrap_or_default()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let mut port = match self.lock_port() {
            Ok(port) => port,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let result = Pin::new(&mut *port).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            if let Ok(mut seen) = self.seen.lock() {
                let new = &buf.filled()[before..];
                let room = TAP_LIMIT.saturating_sub(seen.len());
                seen.extend_from_slice(&new[..new.len().min(room)]);
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.lock_port() {
            Ok(mut port) => Pin::new(&mut *port).poll_write(cx, data),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.lock_port() {
            Ok(mut port) => Pin::new(&mut *port).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.lock_port() {
            Ok(mut port) => Pin::new(&mut *port).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// CRC-16/MODBUS (init 0xFFFF, reflected polynomial 0xA001), sent low byte first.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Says why a transaction got no decodable reply, from the bytes that did arrive: a frame of
/// the right shape from our slave whose CRC does not match is a bad CRC; anything else that
/// arrived is garbage; nothing at all is a timeout.
pub fn classify_silence(seen: &[u8], slave: u8, function: u8, timeout: Duration) -> ModbusError {
    if seen.is_empty() {
        return ModbusError::Timeout(timeout);
    }
    for start in 0..seen.len() {
        let frame = &seen[start..];
        if frame.len() < 5 || frame[0] != slave {
            continue;
        }
        let len = if frame[1] == function | 0x80 {
            5
        } else if frame[1] == function {
            3 + usize::from(frame[2]) + 2
        } else {
            continue;
        };
        if frame.len() >= len {
            let body = &frame[..len - 2];
            let crc = u16::from_le_bytes([frame[len - 2], frame[len - 1]]);
            if crc != crc16(body) {
                return ModbusError::BadCrc(seen.len());
            }
        }
    }
    ModbusError::Garbage(seen.len())
}

fn exception_name(code: ExceptionCode) -> (u8, &'static str) {
    match code {
        ExceptionCode::IllegalFunction => (0x01, "illegal function"),
        ExceptionCode::IllegalDataAddress => (0x02, "illegal data address"),
        ExceptionCode::IllegalDataValue => (0x03, "illegal data value"),
        ExceptionCode::ServerDeviceFailure => (0x04, "server device failure"),
        ExceptionCode::Acknowledge => (0x05, "acknowledge"),
        ExceptionCode::ServerDeviceBusy => (0x06, "server device busy"),
        ExceptionCode::MemoryParityError => (0x08, "memory parity error"),
        ExceptionCode::GatewayPathUnavailable => (0x0A, "gateway path unavailable"),
        ExceptionCode::GatewayTargetDevice => (0x0B, "gateway target device failed to respond"),
        ExceptionCode::Custom(code) => (code, "non-standard exception"),
    }
}

/// One request: a run of registers of one function, and the readings it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterRequest {
    pub function: u8,
    pub start: u16,
    pub count: u16,
    /// (index in the profile's readings, offset of its first register in the reply)
    pub readings: Vec<(usize, u16)>,
}

fn register_count(data_type: DataType) -> u16 {
    match data_type {
        DataType::I16 | DataType::U16 => 1,
        DataType::I32 | DataType::U32 | DataType::F32 => 2,
    }
}

/// Groups the register readings of a profile into as few requests as possible.
pub fn plan_requests(readings: &[Reading]) -> Vec<RegisterRequest> {
    let mut wanted: Vec<(u8, u16, u16, usize)> = readings
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r.source {
            Source::Register {
                register,
                function,
                data_type,
                ..
            } => Some((function, register, register_count(data_type), i)),
            _ => None,
        })
        .collect();
    wanted.sort_by_key(|&(function, register, _, _)| (function, register));
    let mut requests: Vec<RegisterRequest> = Vec::new();
    for (function, register, count, index) in wanted {
        if let Some(last) = requests.last_mut() {
            let end = u32::from(last.start) + u32::from(last.count);
            let new_end = u32::from(register) + u32::from(count);
            // Contiguous (or overlapping) and still within one request's limit.
            if last.function == function
                && u32::from(register) <= end
                && new_end - u32::from(last.start) <= u32::from(MAX_REGISTERS_PER_REQUEST)
            {
                last.count = last.count.max((new_end - u32::from(last.start)) as u16);
                last.readings.push((index, register - last.start));
                continue;
            }
        }
        requests.push(RegisterRequest {
            function,
            start: register,
            count,
            readings: vec![(index, 0)],
        });
    }
    requests
}

/// A Modbus RTU client for one slave on a port.
pub struct ModbusClient<T> {
    tap: Tap<T>,
    slave: u8,
    context: Option<Context>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for ModbusClient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusClient")
            .field("tap", &self.tap)
            .field("slave", &self.slave)
            .field("connected", &self.context.is_some())
            .finish()
    }
}

impl<T: SerialLine> ModbusClient<T> {
    pub fn new(tap: Tap<T>, slave: u8) -> Self {
        ModbusClient {
            tap,
            slave,
            context: None,
        }
    }

    /// Reads `count` registers with function 3 (holding) or 4 (input).
    pub async fn read(
        &mut self,
        function: u8,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Vec<u16>, ModbusError> {
        let _ = self.tap.take_seen();
        let context = self
            .context
            .get_or_insert_with(|| rtu::attach_slave(self.tap.clone(), Slave(self.slave)));
        let request = async {
            match function {
                3 => context.read_holding_registers(start, count).await,
                _ => context.read_input_registers(start, count).await,
            }
        };
        let result = tokio::time::timeout(timeout, request).await;
        let failure = match result {
            Ok(Ok(Ok(registers))) if registers.len() == usize::from(count) => return Ok(registers),
            Ok(Ok(Ok(registers))) => {
                ModbusError::Mismatch(format!("{} registers for {count} asked", registers.len()))
            }
            Ok(Ok(Err(exception))) => {
                let (code, name) = exception_name(exception);
                return Err(ModbusError::Exception { code, name });
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    // The decoder gave up on garbage ("too many retries").
                    classify_silence(&self.tap.take_seen(), self.slave, function, timeout)
                } else {
                    self.context = None;
                    return Err(ModbusError::Io(e.into()));
                }
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => ModbusError::Mismatch(e.to_string()),
            Err(_elapsed) => classify_silence(&self.tap.take_seen(), self.slave, function, timeout),
        };
        // The context's decoder may hold part of a frame: start the next request afresh,
        // with the port's input buffer emptied of what is left of this one.
        self.context = None;
        let _ = self.tap.with_port(|port| port.discard_input());
        Err(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::profile::ByteOrder;

    #[test]
    fn crc_matches_the_reference() {
        assert_eq!(crc16(b"123456789"), 0x4B37);
        // 01 04 00 01 00 02 20 0B
        assert_eq!(crc16(&[0x01, 0x04, 0x00, 0x01, 0x00, 0x02]), 0x0B20);
        // FE 04 00 03 00 01 D5 C5
        assert_eq!(crc16(&[0xFE, 0x04, 0x00, 0x03, 0x00, 0x01]), 0xC5D5);
        // FE 04 02 03 88 AD B2 (904 ppm)
        assert_eq!(crc16(&[0xFE, 0x04, 0x02, 0x03, 0x88]), 0xB2AD);
        // Exception 01 84 02 C2 C1
        assert_eq!(crc16(&[0x01, 0x84, 0x02]), 0xC1C2);
    }

    #[test]
    fn silence_is_classified() {
        let t = Duration::from_millis(100);
        assert_eq!(classify_silence(&[], 1, 4, t), ModbusError::Timeout(t));
        let mut bad = vec![0x01, 0x04, 0x04, 0x01, 0x31, 0x02, 0x22, 0x2A, 0xCF];
        assert_eq!(classify_silence(&bad, 1, 4, t), ModbusError::BadCrc(9));
        bad[8] = 0xCE; // the right CRC: a frame that arrived whole is not garbage...
        assert_eq!(classify_silence(&bad, 1, 4, t), ModbusError::Garbage(9));
        assert_eq!(
            classify_silence(&[0x01, 0x84, 0x02, 0x00, 0x00], 1, 4, t),
            ModbusError::BadCrc(5)
        );
        assert_eq!(classify_silence(b"hello", 1, 4, t), ModbusError::Garbage(5));
    }

    fn register(name: &str, register: u16, function: u8, data_type: DataType) -> Reading {
        Reading {
            name: name.into(),
            unit: String::new(),
            source: Source::Register {
                register,
                function,
                data_type,
                byte_order: ByteOrder::Big,
            },
            scale: 1.0,
            limits: None,
        }
    }

    #[test]
    fn contiguous_registers_share_a_request() {
        let readings = vec![
            register("rh", 2, 4, DataType::U16),
            register("t", 1, 4, DataType::I16),
            register("energy", 10, 4, DataType::U32),
            register("setpoint", 2, 3, DataType::U16),
        ];
        let plan = plan_requests(&readings);
        assert_eq!(
            plan,
            vec![
                RegisterRequest {
                    function: 3,
                    start: 2,
                    count: 1,
                    readings: vec![(3, 0)]
                },
                RegisterRequest {
                    function: 4,
                    start: 1,
                    count: 2,
                    readings: vec![(1, 0), (0, 1)]
                },
                RegisterRequest {
                    function: 4,
                    start: 10,
                    count: 2,
                    readings: vec![(2, 0)]
                },
            ]
        );
    }
}
