//! What becomes of a job once the worker has run it: the one retry and dead-letter policy that
//! every shell applies — `ferry serve`'s worker loop and the SQS Lambda alike.
//!
//! Transient failures (and lost races) come back after an exponential backoff with random
//! jitter, so that jobs failing together do not retry in lockstep; after `max_attempts`
//! deliveries they go to the dead letters. Permanent and not-found failures go there at once,
//! with the reason: retrying a refused credential or a missing image only delays the news.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::error::ErrorClass;
use crate::worker::Outcome;

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Finished or parked: remove the job.
    Ack,
    /// Make the job visible again after this long.
    Retry { after: Duration },
    /// Move the job to the dead letters with its error.
    DeadLetter,
}

/// The policy's settings, from `[worker]`.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    /// Deliveries before a transient failure is dead-lettered.
    pub max_attempts: u32,
    /// The first backoff; it doubles with every further attempt, up to [`MAX_BACKOFF`].
    pub base: Duration,
}

impl RetrySettings {
    pub fn from_config(worker: &crate::config::Worker) -> Self {
        RetrySettings { max_attempts: worker.max_attempts.max(1), base: Duration::from_millis(worker.retry_base_ms) }
    }
}

/// What to do with a job whose `receive_count`-th delivery ended in `outcome`.
pub fn settlement(outcome: &Outcome, receive_count: u32, settings: RetrySettings) -> Settlement {
    let Outcome::Failed { error, .. } = outcome else { return Settlement::Ack };
    match error.class {
        ErrorClass::Transient | ErrorClass::Conflict if receive_count < settings.max_attempts => {
            Settlement::Retry { after: backoff(receive_count, settings.base) }
        }
        _ => Settlement::DeadLetter,
    }
}

/// Exponential backoff with "equal jitter": half the step is fixed, the other half random.
pub fn backoff(attempt: u32, base: Duration) -> Duration {
    let step = base.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    let half = step / 2;
    half + half.mul_f64(random_fraction())
}

/// A uniformly distributed number in [0, 1). `RandomState` is seeded from the OS per thread, so
/// each call gives an unpredictable value without another dependency.
fn random_fraction() -> f64 {
    let bits = std::hash::RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::WorkError;

    const SETTINGS: RetrySettings = RetrySettings { max_attempts: 5, base: Duration::from_secs(2) };

    fn failed(error: WorkError) -> Outcome {
        Outcome::Failed { error, promotion: None }
    }

    #[test]
    fn permanent_and_not_found_failures_dead_letter_at_once() {
        assert_eq!(settlement(&failed(WorkError::permanent("401")), 1, SETTINGS), Settlement::DeadLetter);
        assert_eq!(settlement(&failed(WorkError::not_found("no such tag")), 1, SETTINGS), Settlement::DeadLetter);
    }

    #[test]
    fn transient_failures_retry_until_max_attempts() {
        for attempt in 1..5 {
            let settled = settlement(&failed(WorkError::transient("503")), attempt, SETTINGS);
            assert!(matches!(settled, Settlement::Retry { .. }), "attempt {attempt}: {settled:?}");
        }
        assert_eq!(settlement(&failed(WorkError::transient("503")), 5, SETTINGS), Settlement::DeadLetter);
        assert_eq!(settlement(&Outcome::Done("ok".into()), 5, SETTINGS), Settlement::Ack);
    }

    #[test]
    fn backoff_doubles_within_its_jitter_and_is_capped() {
        for attempt in 1..=4u32 {
            let step = Duration::from_secs(2) * (1 << (attempt - 1));
            let wait = backoff(attempt, Duration::from_secs(2));
            assert!(wait >= step / 2 && wait <= step, "attempt {attempt}: {wait:?} outside [{:?}, {step:?}]", step / 2);
        }
        assert!(backoff(40, Duration::from_secs(2)) <= MAX_BACKOFF);
    }

    #[test]
    fn jitter_is_really_random() {
        let waits: std::collections::HashSet<Duration> = (0..50).map(|_| backoff(3, Duration::from_secs(8))).collect();
        assert!(waits.len() > 40, "50 backoffs gave only {} distinct waits", waits.len());
    }
}
