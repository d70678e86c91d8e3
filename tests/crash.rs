//! `ferry serve` killed (SIGKILL, as a crash) at seeded random moments while a push travels
//! build → dev → prod, then restarted: every stage ends with the pushed digest, byte-exact, and
//! exactly one promotion per stage in the ledger. (Issue 12's crash matrix, shortened: a few
//! seeded runs in the test suite; `CRASH_RUNS=N` runs more.)

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::registry::free_port;
use support::{FerryServer, OciLayout, Registry};

const REPO: &str = "shop/api";
const SECRET: &str = "crash-distribution-secret";
const TOKEN: &str = "crash-operator-token-0123";

/// A small deterministic generator (xorshift), so a failing seed can be run again.
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

fn run(seed: u64) {
    let mut random = Seeded(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let port = free_port();
    let build =
        Registry::plain_notifying(&format!("http://127.0.0.1:{port}/hooks/distribution"), "X-Ferry-Secret", SECRET);
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let config = format!(
        "[worker]\nvisibility_secs = 2\nretry_base_ms = 100\n\
         [registries.\"{b}\"]\nplain_http = true\n[registries.\"{d}\"]\nplain_http = true\n[registries.\"{p}\"]\nplain_http = true\n\
         [sources.distribution]\nsecret_env = \"CRASH_SECRET\"\nheader = \"X-Ferry-Secret\"\n\
         [[pipelines]]\nname = \"shop-api\"\nsource = \"{b}/{REPO}\"\n\
         [[pipelines.stages]]\nname = \"dev\"\ntarget = \"{d}/{REPO}\"\n\
         [[pipelines.stages]]\nname = \"prod\"\ntarget = \"{p}/{REPO}\"\n",
        b = build.host(),
        d = dev.host(),
        p = prod.host()
    );
    let mut server = FerryServer::start_with_operator_token(port, &config, &[("CRASH_SECRET", SECRET)], TOKEN);

    let mut layout = OciLayout::new();
    let image = layout.add_image("1.0", &[6 * 1024 * 1024, 6 * 1024 * 1024, 1024 * 1024]);
    let digest = build.skopeo_push(&layout.reference("1.0"), &format!("{REPO}:1.0"), &[]).computed_digest();
    assert_eq!(digest, image.digest());

    // Two crashes at random moments of the promotion (webhook intake, copies, tags, ledger,
    // next-stage enqueue — wherever they fall), each followed by a restart.
    let mut kills = Vec::new();
    for _ in 0..2 {
        let after = Duration::from_millis(random.below(1500));
        std::thread::sleep(after);
        server.kill();
        kills.push(after);
        server.restart();
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    for (name, registry) in [("dev", &dev), ("prod", &prod)] {
        loop {
            if registry.client().manifest_when_ready(REPO, name).is_some_and(|m| m.digest == digest) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed} (kills after {kills:?}): {name} never got {digest}\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let manifest = registry.client().manifest(REPO, "1.0").expect("the pushed tag");
        assert_eq!(manifest.digest, digest, "seed {seed}: {name}:1.0");
        assert_eq!(manifest.computed_digest(), digest, "seed {seed}: {name}:1.0 bytes");
    }

    // Exactly one promotion per stage, both succeeded (a redelivered job may still be settling:
    // wait for the records to settle before counting).
    let history = |stage: &str| -> Vec<Value> {
        let run = server.cli("history").args(["shop-api", stage, "--json"]).run();
        run.json().as_array().cloned().unwrap_or_default()
    };
    for stage in ["dev", "prod"] {
        let records = loop {
            let records = history(stage);
            if records.iter().all(|r| r["state"] == "succeeded") || Instant::now() > deadline {
                break records;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let of_digest: Vec<&Value> = records.iter().filter(|r| r["digest"] == digest.as_str()).collect();
        assert_eq!(of_digest.len(), 1, "seed {seed} (kills after {kills:?}): promotions into {stage}: {records:#?}");
        assert_eq!(of_digest[0]["state"], "succeeded", "seed {seed}: {records:#?}");
    }
}

#[test]
fn crashes_at_random_moments_of_a_promotion_lose_and_double_nothing() {
    let runs: u64 = std::env::var("CRASH_RUNS").ok().and_then(|n| n.parse().ok()).unwrap_or(3);
    for seed in 1..=runs {
        run(seed);
    }
}
