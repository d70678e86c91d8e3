//! Durable enqueues per second of the embedded queue, for 1 and for many concurrent callers.
//! Each caller enqueues one job at a time, like intake answering one webhook; every `Ok` is
//! committed and fsync'd, so the gap between the rows is what group commit buys.
//!
//! ```text
//! cargo run --release -p ferry-core --example queue_throughput [-- DIR [SECONDS [CALLERS,…]]]
//! ```
//!
//! DIR must be on the disk to measure (a tmpfs makes fsync free); default: a temp dir.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::queue::{JobQueue, NewJob, SqliteQueue, SqliteQueueOptions};

const CALLERS: [usize; 5] = [1, 8, 64, 256, 1024];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let temp = tempfile::tempdir()?;
    let dir = args.next().map_or_else(|| temp.path().to_owned(), PathBuf::from);
    let seconds: u64 = args.next().map_or(Ok(3), |s| s.parse())?;
    let callers: Vec<usize> = match args.next() {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => CALLERS.to_vec(),
    };
    let run_for = Duration::from_secs(seconds);
    println!("queue files in {}, {seconds} s per row", dir.display());

    for callers in callers {
        let path = dir.join(format!("queue-throughput-{callers}.db"));
        let _ = std::fs::remove_file(&path);
        let queue = Arc::new(SqliteQueue::open(&path, SqliteQueueOptions::default())?);
        let before = queue.stats();
        let cpu_before = process_cpu();
        let started = Instant::now();
        let deadline = started + run_for;

        let tasks: Vec<_> = (0..callers)
            .map(|caller| {
                let queue = Arc::clone(&queue);
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let job = NewJob::new(
                            format!("{caller}/{n}"),
                            &serde_json::json!({
                                "pipeline": "web",
                                "source": "registry.example.com/team/web",
                                "digest": "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
                                "build": n,
                            }),
                        );
                        let sent = Instant::now();
                        queue.enqueue(vec![job]).await?;
                        latencies.push(sent.elapsed());
                        n += 1;
                    }
                    Ok::<_, ferry_core::queue::QueueError>(latencies)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await??);
        }
        let elapsed = started.elapsed();
        let cpu = process_cpu().zip(cpu_before).map(|(after, before)| after - before);
        let stats = queue.stats();
        let commits = stats.commits - before.commits;

        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        let cpu_per_job = cpu
            .map_or_else(|| "?".to_owned(), |cpu| format!("{:.1}", cpu.as_secs_f64() * 1e6 / latencies.len() as f64));
        println!(
            "{callers:>5} callers: {:>8.0} enqueues/s   p50 {:>9.2?}   p99 {:>9.2?}   {:>6.1} jobs/commit   \
             {cpu_per_job:>5} µs CPU/job",
            latencies.len() as f64 / elapsed.as_secs_f64(),
            at(0.50),
            at(0.99),
            latencies.len() as f64 / commits.max(1) as f64,
        );
        drop(queue);
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

/// CPU time (user + system) of this process so far, from /proc (Linux only). The machine may be
/// busy with other work; CPU per job does not depend on that the way jobs per second do.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}
