use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Worker, now_ms};
use crate::failpoint::{self, Point};

impl Worker {
    /// Receives jobs until `shutdown` turns true, `concurrency` at a time.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let settings = &self.config.worker;
        let visibility = Duration::from_secs(settings.visibility_secs);
        let slots = Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1)));
        let mut sweep = tokio::time::interval(Duration::from_secs(settings.sweep_secs.max(1)));
        loop {
            if *shutdown.borrow() {
                break;
            }
            let next_timer = self.next_timer();
            // A zero sleep is not ready on its first poll, and a new one is made every turn while
            // the queue branch always is: fire due timers here, or they would starve.
            if next_timer == Some(Duration::ZERO) {
                self.fire_timers().await;
                continue;
            }
            tokio::select! {
                _ = sweep.tick() => {
                    if let Err(e) = self.sweep().await {
                        tracing::warn!(error = %e, "sweeping parked promotions failed");
                    }
                    continue;
                }
                _ = async {
                    match next_timer {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.fire_timers().await;
                    continue;
                }
                // An earlier timer may have been set: compute the sleep again.
                _ = self.timer_added.notified() => continue,
                _ = shutdown.changed() => break,
                permit = slots.clone().acquire_owned() => {
                    let permit = permit.expect("semaphore never closed");
                    failpoint::hit(Point::BeforeReceive).await;
                    match self.queue.receive(1, visibility).await {
                        Ok(mut deliveries) if !deliveries.is_empty() => {
                            let delivery = deliveries.remove(0);
                            let worker = self.clone();
                            tokio::spawn(async move {
                                worker.handle(delivery).await;
                                drop(permit);
                            });
                        }
                        Ok(_) => {
                            drop(permit);
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                                _ = shutdown.changed() => break,
                            }
                        }
                        Err(e) => {
                            drop(permit);
                            tracing::error!(error = %e, "cannot receive jobs");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        }
        // Let jobs in flight finish (or be redelivered later if the process dies first).
        let _ = slots.acquire_many(settings.concurrency.max(1) as u32).await;
    }

    /// Looks at promotion `id` again at `at_ms` (unix ms).
    pub(super) fn wake_at(&self, at_ms: i64, id: &str) {
        self.timers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Reverse((at_ms, id.to_string())));
        self.timer_added.notify_one();
    }

    /// How long until the earliest timer is due.
    pub(super) fn next_timer(&self) -> Option<Duration> {
        let timers = self.timers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Reverse((at_ms, _)) = timers.peek()?;
        Some(Duration::from_millis((at_ms - now_ms()).max(0) as u64))
    }

    /// Wakes every parked promotion whose timer is due.
    pub(super) async fn fire_timers(&self) {
        let now = now_ms();
        let due: Vec<String> = {
            let mut timers = self.timers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut due = Vec::new();
            while timers.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                due.extend(timers.pop().map(|Reverse((_, id))| id));
            }
            due
        };
        for id in due {
            let woken = match self.ledger.promotion(&id).await {
                Ok(Some(record)) if record.state.is_parked() => self.wake(&record, "timer").await.map(|_| ()),
                Ok(_) => Ok(()),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = woken {
                // The sweep tries again.
                tracing::warn!(promotion = %id, error = %e, "could not wake a parked promotion on time");
            }
        }
    }
}
