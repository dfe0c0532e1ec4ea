//! Log lines to stderr, written in batches by a thread of their own.
//!
//! A `write(2)` per line (what `std::io::stderr` does) cost a login about a
//! seventh of its server CPU at the default `info`, mostly in waking the
//! reader of the pipe. Here a line is appended to a buffer and a writer
//! thread writes what has gathered: at once when it was idle, then pausing
//! [`PACE`] after each write, so a busy server makes under a thousand writes a
//! second whatever its rate of lines. A line reaches stderr within about
//! `PACE`; the process ending normally (or by a panic unwinding `main`)
//! writes every line first ([`StderrSink::close`]). Lines are never dropped:
//! when stderr does not take them and [`MAX_PENDING`] bytes wait, loggers
//! wait too, as they would on a blocking `write(2)`.

use std::{
    io::{self, Write},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use parking_lot::{Condvar, Mutex, MutexGuard};

/// The writer thread's pause after each write.
const PACE: Duration = Duration::from_millis(1);
/// Bytes waiting beyond which a logger waits for the writer.
const MAX_PENDING: usize = 1 << 20;

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The writer thread is waiting for a line (and must be woken).
    idle: bool,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer thread.
    lines: Condvar,
    /// Wakes loggers waiting for room.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock()
    }
}

/// The `MakeWriter` of the log layers, and the handle that flushes them.
#[derive(Clone)]
pub(crate) struct StderrSink {
    shared: Arc<Shared>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl StderrSink {
    /// Starts the writer thread (falling back to writing in place if the
    /// thread cannot start).
    pub(crate) fn start() -> Self {
        Self::to(io::stderr())
    }

    /// Writes to `out` instead of stderr (tests).
    fn to(mut out: impl Write + Send + 'static) -> Self {
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || write_batches(&shared, &mut out))
        };
        // No thread: every line is written in place.
        shared.lock().closed = thread.is_err();
        Self {
            shared,
            writer: Arc::new(Mutex::new(thread.ok())),
        }
    }

    /// Writes every line logged so far and stops the writer thread; later
    /// lines are written in place.
    pub(crate) fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.lines.notify_one();
        let thread = self.writer.lock().take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    fn append(&self, line: &[u8]) {
        let mut pending = self.shared.lock();
        while pending.bytes.len() >= MAX_PENDING && !pending.closed {
            self.shared.room.wait(&mut pending);
        }
        if pending.closed {
            drop(pending);
            let _ = io::stderr().write_all(line);
            return;
        }
        pending.bytes.extend_from_slice(line);
        if pending.idle {
            pending.idle = false;
            self.shared.lines.notify_one();
        }
    }
}

/// The writer thread: waits for lines, writes all that gathered, keeps
/// its pace; on close writes what is left and returns.
fn write_batches(shared: &Shared, out: &mut impl Write) {
    let mut batch = Vec::new();
    loop {
        let closed = {
            let mut pending = shared.lock();
            while pending.bytes.is_empty() && !pending.closed {
                pending.idle = true;
                shared.lines.wait(&mut pending);
            }
            std::mem::swap(&mut batch, &mut pending.bytes);
            pending.closed
        };
        shared.room.notify_all();
        // Nowhere to report a failing stderr; the lines are dropped then.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if closed {
            // Lines from now on are written in place.
            return;
        }
        std::thread::sleep(PACE);
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrSink {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(self)
    }
}

/// One log line being written (the fmt layer writes each line whole).
pub(crate) struct Line<'a>(&'a StderrSink);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what the writer thread writes, and how many writes.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut seen = self.0.lock();
            seen.0.extend_from_slice(buf);
            seen.1 += 1;
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_close_in_few_writes() {
        let out = Recorder::default();
        let sink = StderrSink::to(out.clone());
        let loggers: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let line = format!("{t} {i}\n");
                        Line(&sink).write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for logger in loggers {
            logger.join().unwrap();
        }
        sink.close();
        let (bytes, writes) = out.0.lock().clone();
        let text = String::from_utf8(bytes).unwrap();
        let mut next = [0; 4];
        for line in text.lines() {
            let (t, i) = line.split_once(' ').unwrap();
            let t: usize = t.parse().unwrap();
            assert_eq!(
                i.parse::<usize>().unwrap(),
                next[t],
                "lines of one logger in order"
            );
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4], "every line written");
        assert!(writes < 20_000 / 4, "{writes} writes for 20,000 lines");
    }

    #[test]
    fn a_line_reaches_the_output_soon_without_close() {
        let out = Recorder::default();
        let sink = StderrSink::to(out.clone());
        Line(&sink).write_all(b"ready\n").unwrap();
        for _ in 0..5_000 {
            if out.0.lock().0 == b"ready\n" {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("line not written within 5 s");
    }
}
