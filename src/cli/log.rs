//! The server's log writer. A busy `ferry serve` logs a line per webhook; handing each line to a
//! writer thread through a channel woke that thread for nearly every request, which on two
//! cores cost more than formatting the line. Here lines are appended to a shared buffer and a
//! background thread writes it out every [`FLUSH_EVERY`], or at once when a warning or a
//! buffer's worth ([`WAKE_AT`]) is waiting. Nothing is dropped: past [`MAX_BUFFERED`] (the
//! output is stuck) the logging thread writes the buffer itself and waits for it.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use ferry_core::escape::escape_control;
use tracing::{Level, Metadata};
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FormatFields;

/// `FERRY_LOG_FORMAT=json`: log lines as JSON objects (for log collectors), not text.
pub fn json_requested() -> bool {
    std::env::var("FERRY_LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json"))
}

/// How far behind the log of a quiet server can be.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffered bytes that wake the writer thread before its time.
const WAKE_AT: usize = 64 * 1024;
/// Buffered bytes past which a logging thread writes the buffer out itself.
const MAX_BUFFERED: usize = 4 * 1024 * 1024;

/// How log fields are written: as the default formatter does (`name=value`, the message bare),
/// with control characters escaped. Fields carry text from webhooks and registries (a tag, an
/// Azure DevOps status, a registry's error): a newline there must not start a forged log line,
/// nor an ANSI sequence repaint the operator's terminal.
pub fn escaped_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        let text = escape_control(&text);
        if field.name() == "message" { write!(writer, "{text}") } else { write!(writer, "{field}={text}") }
    })
    .delimited(" ")
}

/// The [`MakeWriter`] of the server's log.
#[derive(Clone)]
pub struct BatchedWriter<W> {
    shared: Arc<Shared<W>>,
}

struct Shared<W> {
    /// Lines not yet handed to the output.
    pending: Mutex<Vec<u8>>,
    /// Taken with `pending` held, released after writing: chunks reach the output in order.
    output: Mutex<W>,
    flusher: OnceLock<Thread>,
    stopping: std::sync::atomic::AtomicBool,
}

/// Writes out what is buffered and stops the writer thread when dropped.
pub struct FlushGuard<W: Write + Send + 'static> {
    shared: Arc<Shared<W>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread (`ferry-log-writer`) for `output`.
pub fn batched<W: Write + Send + 'static>(output: W, flush_every: Duration) -> (BatchedWriter<W>, FlushGuard<W>) {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Vec::with_capacity(WAKE_AT)),
        output: Mutex::new(output),
        flusher: OnceLock::new(),
        stopping: std::sync::atomic::AtomicBool::new(false),
    });
    let background = Arc::clone(&shared);
    let thread = std::thread::Builder::new().name("ferry-log-writer".to_owned()).spawn(move || {
        let mut spare = Vec::with_capacity(WAKE_AT);
        loop {
            std::thread::park_timeout(flush_every);
            let stopping = background.stopping.load(std::sync::atomic::Ordering::Acquire);
            background.write_out(&mut spare);
            if stopping {
                break;
            }
        }
    });
    let thread = match thread {
        Ok(thread) => {
            let _ = shared.flusher.set(thread.thread().clone());
            Some(thread)
        }
        // No thread: every line is written by the thread that logs it (see `Line::drop`).
        Err(_) => None,
    };
    (BatchedWriter { shared: Arc::clone(&shared) }, FlushGuard { shared, thread })
}

impl<W: Write> Shared<W> {
    fn pending(&self) -> MutexGuard<'_, Vec<u8>> {
        // A thread that panicked while appending left whole lines or a torn one; keep logging.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Swaps the buffer with `spare` and writes it, outside the `pending` lock.
    fn write_out(&self, spare: &mut Vec<u8>) {
        let mut pending = self.pending();
        if pending.is_empty() {
            return;
        }
        std::mem::swap(&mut *pending, spare);
        let mut output = self.output.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        drop(pending);
        // Nowhere to report a failing stderr; the lines are gone either way.
        let _ = output.write_all(spare).and_then(|()| output.flush());
        spare.clear();
    }
}

impl<W: Write + Send + 'static> Drop for FlushGuard<W> {
    fn drop(&mut self) {
        self.shared.stopping.store(true, std::sync::atomic::Ordering::Release);
        match self.thread.take() {
            Some(thread) => {
                thread.thread().unpark();
                let _ = thread.join();
            }
            None => self.shared.write_out(&mut Vec::new()),
        }
    }
}

/// One log line on its way into the buffer.
pub struct Line<'a, W: Write> {
    shared: &'a Shared<W>,
    urgent: bool,
}

impl<W: Write> Write for Line<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.shared.pending();
        let before = pending.len();
        pending.extend_from_slice(bytes);
        if pending.len() >= MAX_BUFFERED || self.shared.flusher.get().is_none() {
            // The output is not keeping up (or there is no writer thread): wait for it.
            let mut output = self.shared.output.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let _ = output.write_all(&pending).and_then(|()| output.flush());
            pending.clear();
        } else if before < WAKE_AT && pending.len() >= WAKE_AT {
            self.urgent = true;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for Line<'_, W> {
    fn drop(&mut self) {
        if self.urgent
            && let Some(flusher) = self.shared.flusher.get()
        {
            flusher.unpark();
        }
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for BatchedWriter<W> {
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        self.line(false)
    }

    /// Warnings and errors are written out at once: someone may be waiting for them.
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        self.line(*meta.level() <= Level::WARN)
    }
}

impl<W: Write> BatchedWriter<W> {
    fn line(&self, urgent: bool) -> Line<'_, W> {
        Line { shared: &self.shared, urgent }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// An output the test can read while the writer thread holds it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn control_characters_in_log_fields_and_messages_are_escaped() {
        let output = Captured::default();
        let captured = output.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || captured.clone())
            .with_ansi(false)
            .fmt_fields(escaped_fields())
            .finish();
        let forged = "succeeded\n2026-01-01T00:00:00Z  INFO forged line \u{1b}[2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(status = %forged, tag = forged, "report from {}", forged);
        });
        let text = output.text();
        assert_eq!(text.lines().count(), 1, "one event, one line: {text:?}");
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains("status=succeeded\\n2026-01-01T00:00:00Z  INFO forged line \\u{1b}[2J"), "{text:?}");
        assert!(text.contains("report from succeeded\\n"), "{text:?}");
    }

    fn log(writer: &BatchedWriter<Captured>, line: &str) {
        writer.line(false).write_all(line.as_bytes()).unwrap();
    }

    fn wait_for(output: &Captured, text: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if output.text().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_guard_drops() {
        let output = Captured::default();
        let (writer, guard) = batched(output.clone(), Duration::from_secs(3600));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for n in 0..2_000 {
                        log(&writer, &format!("t{t} line {n}\n"));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(guard);

        let text = output.text();
        assert_eq!(text.lines().count(), 8_000);
        for t in 0..4 {
            let numbers: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("t{t} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(numbers, (0..2_000).collect::<Vec<_>>(), "thread {t}'s lines out of order or missing");
        }
    }

    #[test]
    fn quiet_lines_wait_for_the_interval_and_warnings_do_not() {
        let output = Captured::default();
        let (writer, _guard) = batched(output.clone(), Duration::from_secs(3600));
        let subscriber = tracing_subscriber::fmt().with_writer(writer).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("webhook queued");
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(output.text(), "", "an info line was written before its interval");

            tracing::warn!("webhook refused");
            assert!(wait_for(&output, "webhook refused", Duration::from_secs(10)), "a warning waited");
        });
        let text = output.text();
        assert!(text.contains("INFO") && text.contains("webhook queued"), "{text}");
        assert!(text.find("webhook queued") < text.find("webhook refused"), "{text}");
    }

    #[test]
    fn a_quiet_servers_log_is_at_most_an_interval_behind() {
        let output = Captured::default();
        let (writer, _guard) = batched(output.clone(), Duration::from_millis(20));
        log(&writer, "listening\n");
        assert!(wait_for(&output, "listening", Duration::from_secs(10)));
    }

    #[test]
    fn a_full_buffer_wakes_the_writer_thread() {
        let output = Captured::default();
        let (writer, _guard) = batched(output.clone(), Duration::from_secs(3600));
        let line = format!("{}\n", "x".repeat(1023));
        for _ in 0..(WAKE_AT / 1024 + 1) {
            log(&writer, &line);
        }
        assert!(wait_for(&output, "xxx", Duration::from_secs(10)), "64 KiB waited for the interval");
    }

    #[test]
    fn a_stuck_output_makes_loggers_write_themselves_and_loses_nothing() {
        let output = Captured::default();
        let (writer, guard) = batched(output.clone(), Duration::from_secs(3600));
        // Hold the output as a stuck stderr would, so the writer thread cannot drain.
        let held = guard.shared.output.lock().unwrap();
        let line = format!("{}\n", "y".repeat(1023));
        let logger = {
            let writer = writer.clone();
            let line = line.clone();
            std::thread::spawn(move || {
                for _ in 0..(MAX_BUFFERED / 1024 + 10) {
                    log(&writer, &line);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!logger.is_finished(), "the logger went on past the limit without waiting for the output");
        drop(held);
        logger.join().unwrap();
        drop(guard);
        assert_eq!(output.text().lines().count(), MAX_BUFFERED / 1024 + 10);
    }
}
