//! A minimum throughput for blob transfers. Blobs may be gigabytes, so they get no total
//! deadline; instead a transfer fails when fewer than `blob_min_bytes` move in a window, so a
//! registry that trickles (or stops reading) cannot hold a transfer slot for ever.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use super::BlobStream;

/// What moved through one blob's stream so far.
#[derive(Debug, Default)]
pub struct TransferMeter {
    bytes: AtomicU64,
    /// The consumer is waiting for the source (so a stall is the source's fault, not the
    /// target's, which would otherwise not be reading).
    waiting_on_source: AtomicBool,
    finished: AtomicBool,
}

/// Which side a stalled transfer was waiting on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StalledSide {
    Source,
    Target,
}

impl TransferMeter {
    /// Wraps `stream` so that this meter sees every chunk.
    pub fn meter(self: &Arc<Self>, stream: BlobStream) -> BlobStream {
        Metered { inner: stream, meter: self.clone() }.boxed()
    }

    /// Runs `transfer` (which drains the metered stream) and gives up when fewer than
    /// `min_bytes` pass in any `window` before the stream ends. After the last byte, waiting
    /// for the registry's answer is the request's own business (read timeout).
    pub async fn guard<T>(
        &self,
        transfer: impl Future<Output = T>,
        min_bytes: u64,
        window: Duration,
    ) -> Result<T, StalledSide> {
        let transfer = std::pin::pin!(transfer);
        let mut transfer = transfer;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
        let mut at_last_tick = 0;
        loop {
            tokio::select! {
                done = &mut transfer => return Ok(done),
                _ = ticks.tick() => {
                    if self.finished.load(Ordering::Acquire) {
                        continue;
                    }
                    let bytes = self.bytes.load(Ordering::Acquire);
                    if bytes - at_last_tick < min_bytes {
                        return Err(if self.waiting_on_source.load(Ordering::Acquire) {
                            StalledSide::Source
                        } else {
                            StalledSide::Target
                        });
                    }
                    at_last_tick = bytes;
                }
            }
        }
    }
}

struct Metered {
    inner: BlobStream,
    meter: Arc<TransferMeter>,
}

impl Stream for Metered {
    type Item = Result<bytes::Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        let meter = &self.meter;
        meter.waiting_on_source.store(polled.is_pending(), Ordering::Release);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => {
                meter.bytes.fetch_add(chunk.len() as u64, Ordering::AcqRel);
            }
            Poll::Ready(None) => meter.finished.store(true, Ordering::Release),
            _ => {}
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trickle(chunks: usize, every: Duration) -> BlobStream {
        futures_util::stream::unfold(0, move |n| async move {
            if n == chunks {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(bytes::Bytes::from_static(b"x")), n + 1))
        })
        .boxed()
    }

    async fn drain(mut stream: BlobStream) -> usize {
        let mut n = 0;
        while let Some(chunk) = stream.next().await {
            n += chunk.unwrap().len();
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_source_stalls() {
        let meter = Arc::new(TransferMeter::default());
        let stream = meter.meter(trickle(1_000_000, Duration::from_secs(1)));
        let result = meter.guard(drain(stream), 1024, Duration::from_secs(10)).await;
        assert_eq!(result, Err(StalledSide::Source));
    }

    #[tokio::test(start_paused = true)]
    async fn a_target_that_stops_reading_stalls() {
        let meter = Arc::new(TransferMeter::default());
        let mut stream = meter.meter(trickle(1_000_000, Duration::ZERO));
        let reader = async move {
            stream.next().await;
            // The target takes one chunk, then never reads again.
            std::future::pending::<()>().await
        };
        assert_eq!(meter.guard(reader, 1024, Duration::from_secs(10)).await, Err(StalledSide::Target));
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_blob_and_the_wait_after_the_last_byte_are_fine() {
        let meter = Arc::new(TransferMeter::default());
        let stream = meter.meter(trickle(3, Duration::from_millis(10)));
        let transfer = async move {
            let n = drain(stream).await;
            // The registry takes its time to verify the digest after the last byte.
            tokio::time::sleep(Duration::from_secs(60)).await;
            n
        };
        assert_eq!(meter.guard(transfer, 1024, Duration::from_secs(10)).await, Ok(3));
    }
}
