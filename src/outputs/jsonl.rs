//! JSON Lines: one record per line, in the schema of [`crate::record`].

use std::io::{self, Write};

use crate::record::Record;

/// Writes records as JSON Lines. Each line is serialised into a reused buffer and handed to
/// `out` in one write: serde_json writes token by token, and a `BufWriter` costs a call per
/// token where a `Vec` costs a copy (the JSON writing was ~13 % of a SIP replay's profile).
#[derive(Debug)]
pub struct JsonLines<W: Write> {
    out: W,
    line: Vec<u8>,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines {
            out,
            line: Vec::with_capacity(4096),
        }
    }

    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)?;
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// [`JsonLines`] on a thread of its own (`teledge replay`): records are handed over in order
/// through a bounded queue ([`JsonLinesThread::QUEUE`] records), and serialised and written
/// while the caller goes on decoding. Serialising the records was a sixth of a SIP replay's
/// instructions; with a second core it runs beside the decoding.
#[derive(Debug)]
pub struct JsonLinesThread {
    queue: Option<std::sync::mpsc::SyncSender<Record>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl JsonLinesThread {
    /// Records waiting to be written at most (each a few KiB).
    pub const QUEUE: usize = 64;

    pub fn spawn<W: Write + Send + 'static>(out: W) -> io::Result<Self> {
        let (queue, records) = std::sync::mpsc::sync_channel::<Record>(Self::QUEUE);
        let thread = std::thread::Builder::new()
            .name("records-out".into())
            .spawn(move || {
                let mut lines = JsonLines::new(out);
                for record in records {
                    // On an error the queue closes: the caller stops sending and hears of
                    // the error from `finish`.
                    lines.write(&record)?;
                }
                lines.finish().map(drop)
            })?;
        Ok(JsonLinesThread {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues a record; false once writing has failed (the error comes from `finish`).
    pub fn write(&mut self, record: Record) -> bool {
        self.queue.as_ref().is_some_and(|q| q.send(record).is_ok())
    }

    /// Waits for every queued record to be written and flushed.
    pub fn finish(mut self) -> io::Result<()> {
        self.queue = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Ok(()),
        }
    }
}
