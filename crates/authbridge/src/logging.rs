//! Log output off the request path: each event is formatted into its own buffer and handed to
//! a writer thread, which writes to stderr in batches. A request (and its access-log line)
//! never waits for a `write(2)` to a slow pipe or file; when the writer falls far behind, the
//! bounded queue makes callers wait rather than drop lines.

use crate::cli::LogFormat;
use std::io::{IsTerminal, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

static QUEUE: OnceLock<SyncSender<Msg>> = OnceLock::new();

/// Lines waiting for the writer thread before callers block.
const QUEUE_LINES: usize = 16 * 1024;

fn queue() -> &'static SyncSender<Msg> {
    QUEUE.get_or_init(|| {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("authbridge-log".into())
            .spawn(move || write_loop(rx))
            .expect("spawn the log writer thread");
        tx
    })
}

fn write_loop(rx: Receiver<Msg>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr().lock());
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Write everything queued, then flush once.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(l) => {
                    let _ = out.write_all(&l);
                }
                Msg::Flush(ack) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}

/// One event's bytes; queued when the formatter is done with it.
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
        let line = std::mem::take(&mut self.0);
        match queue().try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) => {
                let _ = queue().send(msg);
            }
            Err(TrySendError::Disconnected(_)) => {}
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

/// Waits (at most a second) until every line logged so far is written.
pub fn flush() {
    let Some(q) = QUEUE.get() else { return };
    let (ack_tx, ack_rx) = sync_channel(1);
    if q.send(Msg::Flush(ack_tx)).is_ok() {
        let _ = ack_rx.recv_timeout(Duration::from_secs(1));
    }
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
    fn lines_are_queued_whole_and_flush_waits_for_them() {
        let mut l = Line(Vec::new());
        l.write_all(b"part one, ").unwrap();
        l.write_all(b"part two\n").unwrap();
        assert_eq!(l.0, b"part one, part two\n");
        drop(l);
        assert!(QUEUE.get().is_some(), "the line went to the writer queue");
        flush();
    }
}
