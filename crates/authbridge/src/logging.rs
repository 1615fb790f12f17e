//! Log output off the request path: each event is formatted into its own buffer, appended to
//! a shared batch, and a writer thread writes the batch to stderr every few milliseconds (or at
//! once when it grows large). A request (and its access-log line) never waits for a `write(2)`
//! to a slow pipe or file, and a busy proxy makes one write per batch instead of one per line.
//! When the writer falls far behind, callers wait rather than drop lines.

use crate::cli::LogFormat;
use std::io::{IsTerminal, Write};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

struct Shared {
    batch: Mutex<Vec<u8>>,
    /// Signals the writer (batch large) and waiting callers (batch drained).
    cv: Condvar,
}

static SHARED: OnceLock<&'static Shared> = OnceLock::new();

/// How long a line may wait in the batch.
const INTERVAL: Duration = Duration::from_millis(5);
/// A batch this large is written at once.
const EAGER: usize = 64 * 1024;
/// Callers wait while the batch is this large (the writer is stuck).
const LIMIT: usize = 8 * 1024 * 1024;

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let s: &'static Shared = Box::leak(Box::new(Shared {
            batch: Mutex::new(Vec::with_capacity(EAGER)),
            cv: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("authbridge-log".into())
            .spawn(move || write_loop(s))
            .expect("spawn the log writer thread");
        s
    })
}

fn write_loop(s: &'static Shared) {
    let mut out = std::io::stderr();
    let mut spare = Vec::with_capacity(EAGER);
    loop {
        {
            let mut batch = s.batch.lock().unwrap_or_else(|e| e.into_inner());
            // Idle: sleep until a first line arrives, then give others a moment to join it.
            while batch.is_empty() {
                batch = s.cv.wait(batch).unwrap_or_else(|e| e.into_inner());
            }
            if batch.len() < EAGER {
                batch =
                    s.cv.wait_timeout(batch, INTERVAL)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
            }
            std::mem::swap(&mut *batch, &mut spare);
        }
        s.cv.notify_all();
        if !spare.is_empty() {
            let _ = out.write_all(&spare);
            let _ = out.flush();
            spare.clear();
        }
    }
}

/// One event's bytes; appended to the batch when the formatter is done with it.
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let s = shared();
        let mut batch = s.batch.lock().unwrap_or_else(|e| e.into_inner());
        while batch.len() >= LIMIT {
            batch = s.cv.wait(batch).unwrap_or_else(|e| e.into_inner());
        }
        let first = batch.is_empty();
        batch.extend_from_slice(&self.0);
        if first || batch.len() >= EAGER {
            s.cv.notify_all();
        }
    }
}

struct Writer;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Writer {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

/// Writes every line logged so far (called before the process exits).
pub fn flush() {
    let Some(s) = SHARED.get() else { return };
    let pending = std::mem::take(&mut *s.batch.lock().unwrap_or_else(|e| e.into_inner()));
    s.cv.notify_all();
    let mut err = std::io::stderr();
    let _ = err.write_all(&pending);
    let _ = err.flush();
}

/// Installs the global subscriber: `RUST_LOG` filter (default `info`), text (ANSI colours only
/// on a terminal) or JSON lines, written through the queue above.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(Writer);
    if format == LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_batched_whole_and_flush_empties_the_batch() {
        let mut l = Line(Vec::new());
        l.write_all(b"part one, ").unwrap();
        l.write_all(b"part two\n").unwrap();
        assert_eq!(l.0, b"part one, part two\n");
        drop(l);
        let s = SHARED.get().expect("the line went to the shared batch");
        flush();
        assert!(s.batch.lock().unwrap().is_empty());
    }
}
