//! Named points of a promotion where a test can stop `ferry serve` deterministically, so the
//! crash matrix (`tests/crash.rs`) kills it exactly there rather than by chance.
//!
//! `FERRY_FAILPOINTS=point=action[,point=action…]`, read once; actions:
//! - `pause`: log `ferry failpoint <point> reached` on stderr and hang this task for good (the
//!   test waits for the line, then SIGKILLs the process, as a crash would);
//! - `abort`: log the same line and abort the process at once.
//!
//! Only debug builds read the variable; in release builds [`hit`] is an empty inline function.

/// Every named point. The names are what `FERRY_FAILPOINTS` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The worker is about to receive a job (a webhook may have been answered 202 already).
    BeforeReceive,
    /// One blob has been written to the target; others may still be in flight.
    AfterBlobCopied,
    /// Every blob and child manifest is in the target; the root manifest (the tag) is not.
    AfterCopyBeforeTag,
    /// The target carries the tags; nothing about it is in the ledger yet.
    AfterTagBeforeLedger,
    /// The promotion is recorded as succeeded; the next stage's job is not queued yet.
    BeforeNextStageEnqueue,
}

impl Point {
    pub const ALL: [Point; 5] = [
        Point::BeforeReceive,
        Point::AfterBlobCopied,
        Point::AfterCopyBeforeTag,
        Point::AfterTagBeforeLedger,
        Point::BeforeNextStageEnqueue,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Point::BeforeReceive => "before_receive",
            Point::AfterBlobCopied => "after_blob_copied",
            Point::AfterCopyBeforeTag => "after_copy_before_tag",
            Point::AfterTagBeforeLedger => "after_tag_before_ledger",
            Point::BeforeNextStageEnqueue => "before_next_stage_enqueue",
        }
    }
}

/// The environment variable that arms failpoints (debug builds only).
pub const ENV: &str = "FERRY_FAILPOINTS";

#[cfg(debug_assertions)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Pause,
    Abort,
}

#[cfg(debug_assertions)]
fn armed() -> &'static [(Point, Action)] {
    static ARMED: std::sync::OnceLock<Vec<(Point, Action)>> = std::sync::OnceLock::new();
    ARMED.get_or_init(|| {
        let Ok(spec) = std::env::var(ENV) else { return Vec::new() };
        let mut armed = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, action) = entry.split_once('=').unwrap_or((entry, "pause"));
            let point = Point::ALL.into_iter().find(|p| p.name() == name);
            let action = match action {
                "pause" => Some(Action::Pause),
                "abort" => Some(Action::Abort),
                _ => None,
            };
            match (point, action) {
                (Some(point), Some(action)) => armed.push((point, action)),
                _ => eprintln!(
                    "ferry: {ENV}: ignoring `{entry}`: points are {}; actions are pause and abort",
                    Point::ALL.map(Point::name).join(", ")
                ),
            }
        }
        armed
    })
}

/// Stops here when `point` is armed (debug builds); returns at once otherwise.
#[cfg(debug_assertions)]
pub async fn hit(point: Point) {
    let Some((_, action)) = armed().iter().find(|(p, _)| *p == point) else { return };
    eprintln!("ferry failpoint {} reached", point.name());
    match action {
        Action::Pause => std::future::pending::<()>().await,
        Action::Abort => std::process::abort(),
    }
}

/// Release builds: nothing to do.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub async fn hit(_point: Point) {}
