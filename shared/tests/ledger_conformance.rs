//! One suite, every [`Ledger`]: each test below runs against the embedded SQLite ledger and
//! against [`DynamoLedger`] on a table in `moto_server` (hash key `pk`, range key `sk`, TTL on
//! `expires_at`, as template.yaml and infra/ create it).

#[path = "conformance/moto.rs"]
mod moto;

use std::any::Any;
use std::sync::Arc;

use ferry_core::ledger::{
    Approval, DeploymentRecord, DynamoLedger, EnvironmentEntry, GateDecision, JobRecord, JobState, Ledger, LedgerError,
    PromotionRecord, PromotionState, SqliteLedger, promotion_id,
};

const PIPELINE: &str = "web";
/// Workers racing in the race tests.
const RACERS: usize = 8;

struct Backend {
    ledger: Arc<dyn Ledger>,
    _keep: Box<dyn Any>,
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let ledger = SqliteLedger::open(&dir.path().join("ledger.db")).unwrap();
    Backend { ledger: Arc::new(ledger), _keep: Box::new(dir) }
}

async fn dynamodb() -> Backend {
    let moto = moto::Moto::start();
    let table = moto.ledger_table().await;
    let ledger = DynamoLedger::open(moto.dynamodb(), &table).await.unwrap();
    Backend { ledger: Arc::new(ledger), _keep: Box::new(moto) }
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                super::$test(super::sqlite()).await
            })*
        }
        mod dynamodb {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                super::$test(super::dynamodb().await).await
            })*
        }
    };
}

conformance!(
    promotions_round_trip,
    put_replaces_the_record_everywhere,
    history_is_newest_first_and_filtered_by_stage,
    approvals_count_once_per_person,
    unknown_promotion_cannot_be_approved,
    parked_lists_waiting_promotions_oldest_first,
    racing_workers_record_one_promotion_once,
    racing_promotions_of_different_digests_are_all_kept,
    racing_puts_leave_one_consistent_record,
    deployments_are_newest_first,
    job_records_round_trip_and_are_replaced,
);

fn record(stage: &str, digest: &str, state: PromotionState, created_at_ms: i64) -> PromotionRecord {
    PromotionRecord {
        id: promotion_id(PIPELINE, stage, digest),
        pipeline: PIPELINE.to_owned(),
        stage: stage.to_owned(),
        source: "registry.dev.example/web".to_owned(),
        target: format!("registry.{stage}.example/web"),
        digest: digest.to_owned(),
        tag: Some("1.4.2".to_owned()),
        tag_moved_to: None,
        build_id: Some("8812".to_owned()),
        build_number: Some("2024.06.1".to_owned()),
        trigger: "webhook:distribution".to_owned(),
        triggered_by: None,
        state,
        gates: vec![GateDecision {
            gate: "auto".to_owned(),
            decision: "pass".to_owned(),
            detail: "no gate".to_owned(),
            at_ms: created_at_ms,
        }],
        approvals: Vec::new(),
        error: None,
        attempts: 1,
        created_at_ms,
        updated_at_ms: created_at_ms,
        finished_at_ms: None,
        job_id: Some("job-1".to_owned()),
    }
}

fn entry(digest: &str, since_ms: i64) -> EnvironmentEntry {
    EnvironmentEntry {
        digest: digest.to_owned(),
        tag: Some("1.4.2".to_owned()),
        build_number: None,
        promotion_id: promotion_id(PIPELINE, "prod", digest),
        since_ms,
    }
}

fn ids(records: &[PromotionRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

fn digests(entries: &[EnvironmentEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.digest.as_str()).collect()
}

fn approvers(approvals: &[Approval]) -> Vec<&str> {
    approvals.iter().map(|a| a.by.as_str()).collect()
}

async fn promotions_round_trip(backend: Backend) {
    let ledger = backend.ledger.as_ref();
    let stored = record("prod", "sha256:aaa", PromotionState::Running, 1_000);
    ledger.put_promotion(stored.clone()).await.unwrap();
    assert_eq!(ledger.promotion(&stored.id).await.unwrap(), Some(stored));
    assert_eq!(ledger.promotion("p-0000000000000000").await.unwrap(), None);
}

async fn put_replaces_the_record_everywhere(backend: Backend) {
    let ledger = backend.ledger.as_ref();
    let mut stored = record("prod", "sha256:aaa", PromotionState::AwaitingApproval, 1_000);
    ledger.put_promotion(stored.clone()).await.unwrap();
    stored.state = PromotionState::Succeeded;
    stored.updated_at_ms = 2_000;
    stored.finished_at_ms = Some(2_000);
    ledger.put_promotion(stored.clone()).await.unwrap();
    assert_eq!(ledger.promotion(&stored.id).await.unwrap().unwrap().state, PromotionState::Succeeded);
    let history = ledger.history(PIPELINE, None, 10).await.unwrap();
    assert_eq!(history, vec![stored.clone()], "history holds the newest version, once");
    assert!(ledger.parked(None).await.unwrap().is_empty(), "no longer parked");
    // A record whose creation time changes (a rolled-back digest promoted again) moves in
    // history instead of appearing twice.
    stored.created_at_ms = 5_000;
    ledger.put_promotion(stored.clone()).await.unwrap();
    assert_eq!(ledger.history(PIPELINE, Some("prod"), 10).await.unwrap(), vec![stored]);
}

async fn history_is_newest_first_and_filtered_by_stage(backend: Backend) {
    let ledger = backend.ledger.as_ref();
    let dev_old = record("dev", "sha256:d1", PromotionState::Succeeded, 1_000);
    let prod = record("prod", "sha256:p1", PromotionState::Succeeded, 3_000);
    let dev_new = record("dev", "sha256:d2", PromotionState::Running, 2_000);
    let mut elsewhere = record("dev", "sha256:e1", PromotionState::Succeeded, 9_000);
    elsewhere.pipeline = "api".into();
    elsewhere.id = promotion_id("api", "dev", "sha256:e1");
    for r in [&dev_old, &prod, &dev_new, &elsewhere] {
        ledger.put_promotion(r.clone()).await.unwrap();
    }
    let all = ledger.history(PIPELINE, None, 10).await.unwrap();
    assert_eq!(ids(&all), vec![prod.id.as_str(), dev_new.id.as_str(), dev_old.id.as_str()]);
    let dev = ledger.history(PIPELINE, Some("dev"), 10).await.unwrap();
    assert_eq!(ids(&dev), vec![dev_new.id.as_str(), dev_old.id.as_str()]);
    let newest = ledger.history(PIPELINE, None, 2).await.unwrap();
    assert_eq!(ids(&newest), vec![prod.id.as_str(), dev_new.id.as_str()]);
    assert!(ledger.history(PIPELINE, Some("qa"), 10).await.unwrap().is_empty());
}

async fn approvals_count_once_per_person(backend: Backend) {
    let ledger = backend.ledger.as_ref();
    let parked = record("prod", "sha256:aaa", PromotionState::AwaitingApproval, 1_000);
    ledger.put_promotion(parked.clone()).await.unwrap();
    assert_eq!(approvers(&ledger.approve(&parked.id, "alice", 2_000).await.unwrap()), vec!["alice"]);
    // Alice again, and Alice many times at once: still one approval.
    assert_eq!(approvers(&ledger.approve(&parked.id, "alice", 3_000).await.unwrap()), vec!["alice"]);
    let racing: Vec<_> = (0..RACERS).map(|i| ledger.approve(&parked.id, "alice", 4_000 + i as i64)).collect();
    for result in futures_util::future::join_all(racing).await {
        assert_eq!(approvers(&result.unwrap()), vec!["alice"]);
    }
    let approvals = ledger.approve(&parked.id, "bob", 5_000).await.unwrap();
    assert_eq!(
        approvals,
        vec![Approval { by: "alice".into(), at_ms: 2_000 }, Approval { by: "bob".into(), at_ms: 5_000 }]
    );
    let reread = ledger.promotion(&parked.id).await.unwrap().unwrap();
    assert_eq!(reread.approvals, approvals, "the record carries its approvals");
    // Storing the record again (as the worker does) neither loses nor doubles them.
    ledger.put_promotion(reread.clone()).await.unwrap();
    assert_eq!(ledger.promotion(&parked.id).await.unwrap().unwrap().approvals, approvals);
}

async fn unknown_promotion_cannot_be_approved(backend: Backend) {
    let result = backend.ledger.approve("p-0000000000000000", "alice", 1_000).await;
    assert!(matches!(result, Err(LedgerError::UnknownPromotion(ref id)) if id == "p-0000000000000000"), "{result:?}");
}

async fn parked_lists_waiting_promotions_oldest_first(backend: Backend) {
    let ledger = backend.ledger.as_ref();
    let approval = record("prod", "sha256:a", PromotionState::AwaitingApproval, 2_000);
    let gate = record("qa", "sha256:g", PromotionState::AwaitingGate, 1_000);
    let running = record("dev", "sha256:r", PromotionState::Running, 1_500);
    let mut other = record("prod", "sha256:o", PromotionState::AwaitingGate, 500);
    other.pipeline = "api".into();
    other.id = promotion_id("api", "prod", "sha256:o");
    for r in [&approval, &gate, &running, &other] {
        ledger.put_promotion(r.clone()).await.unwrap();
    }
    let all = ledger.parked(None).await.unwrap();
    assert_eq!(ids(&all), vec![other.id.as_str(), gate.id.as_str(), approval.id.as_str()]);
    let web = ledger.parked(Some(PIPELINE)).await.unwrap();
    assert_eq!(ids(&web), vec![gate.id.as_str(), approval.id.as_str()]);
    let mut released = gate.clone();
    released.state = PromotionState::Running;
    ledger.put_promotion(released).await.unwrap();
    assert_eq!(ids(&ledger.parked(Some(PIPELINE)).await.unwrap()), vec![approval.id.as_str()]);
}

/// Two (here eight) workers finish the same promotion at once — a redelivered job racing its
/// first delivery — and each records the new current digest: it is recorded once, and the
/// previous digest stays the one before it.
async fn racing_workers_record_one_promotion_once(backend: Backend) {
    let ledger = backend.ledger.clone();
    ledger.set_current(PIPELINE, "prod", entry("sha256:old", 1_000)).await.unwrap();
    let racing: Vec<_> = (0..RACERS)
        .map(|i| {
            let ledger = ledger.clone();
            tokio::spawn(
                async move { ledger.set_current(PIPELINE, "prod", entry("sha256:new", 2_000 + i as i64)).await },
            )
        })
        .collect();
    for task in racing {
        task.await.unwrap().unwrap();
    }
    let history = ledger.environment_history(PIPELINE, "prod", 10).await.unwrap();
    assert_eq!(digests(&history), vec!["sha256:new", "sha256:old"], "{history:?}");
    let state = ledger.environment(PIPELINE, "prod").await.unwrap().unwrap();
    assert_eq!(state.current.digest, "sha256:new");
    assert_eq!(state.previous.map(|p| p.digest).as_deref(), Some("sha256:old"));
    assert!(ledger.environment(PIPELINE, "dev").await.unwrap().is_none());
}

/// Different promotions into one stage at once: none is lost, none doubled.
async fn racing_promotions_of_different_digests_are_all_kept(backend: Backend) {
    let ledger = backend.ledger.clone();
    let racing: Vec<_> = (0..RACERS)
        .map(|i| {
            let ledger = ledger.clone();
            tokio::spawn(
                async move { ledger.set_current(PIPELINE, "prod", entry(&format!("sha256:{i}"), 1_000)).await },
            )
        })
        .collect();
    for task in racing {
        task.await.unwrap().unwrap();
    }
    let history = ledger.environment_history(PIPELINE, "prod", 100).await.unwrap();
    let mut recorded = digests(&history);
    recorded.sort();
    let expected: Vec<String> = (0..RACERS).map(|i| format!("sha256:{i}")).collect();
    assert_eq!(recorded, expected.iter().map(String::as_str).collect::<Vec<_>>());
    let state = ledger.environment(PIPELINE, "prod").await.unwrap().unwrap();
    assert_eq!(state.current, history[0], "current is the newest entry");
    assert_eq!(state.previous.as_ref(), history.get(1));
}

/// Workers storing the same promotion at once leave one record, in history once, and parked
/// exactly when the stored record is parked.
async fn racing_puts_leave_one_consistent_record(backend: Backend) {
    let ledger = backend.ledger.clone();
    let racing: Vec<_> = (0..RACERS)
        .map(|i| {
            let ledger = ledger.clone();
            let state = if i % 2 == 0 { PromotionState::AwaitingGate } else { PromotionState::Running };
            let mut r = record("prod", "sha256:aaa", state, 1_000 + (i % 3) as i64);
            r.attempts = i as u32;
            tokio::spawn(async move { ledger.put_promotion(r).await })
        })
        .collect();
    for task in racing {
        task.await.unwrap().unwrap();
    }
    let id = promotion_id(PIPELINE, "prod", "sha256:aaa");
    let stored = ledger.promotion(&id).await.unwrap().unwrap();
    let history = ledger.history(PIPELINE, None, 100).await.unwrap();
    assert_eq!(history, vec![stored.clone()], "one record in history, the stored one");
    let parked = ledger.parked(None).await.unwrap();
    if stored.state.is_parked() {
        assert_eq!(parked, vec![stored]);
    } else {
        assert!(parked.is_empty(), "{parked:?}");
    }
}

async fn deployments_are_newest_first(backend: Backend) {
    let ledger = backend.ledger.as_ref();
    let report = |status: &str, at_ms| DeploymentRecord {
        pipeline: PIPELINE.into(),
        stage: "prod".into(),
        status: status.into(),
        digest: Some("sha256:aaa".into()),
        reporter: "azure-devops".into(),
        detail: Some("release 7".into()),
        at_ms,
    };
    for (status, at) in [("failed", 1_000), ("succeeded", 3_000), ("canceled", 2_000)] {
        ledger.record_deployment(report(status, at)).await.unwrap();
    }
    let newest = ledger.deployments(PIPELINE, "prod", 2).await.unwrap();
    assert_eq!(newest, vec![report("succeeded", 3_000), report("canceled", 2_000)]);
    assert!(ledger.deployments(PIPELINE, "dev", 10).await.unwrap().is_empty());
}

mod dynamodb_only {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    use ferry_core::ledger::{DynamoLedger, LedgerError};

    #[tokio::test(flavor = "multi_thread")]
    async fn a_table_with_other_keys_is_refused_with_the_schema_to_use() {
        let moto = super::moto::Moto::start();
        let client = moto.dynamodb();
        client
            .create_table()
            .table_name("not-ferrys")
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("id")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(KeySchemaElement::builder().attribute_name("id").key_type(KeyType::Hash).build().unwrap())
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .unwrap();
        let error = DynamoLedger::open(client.clone(), "not-ferrys").await.err().expect("refused");
        assert!(
            matches!(error, LedgerError::Unavailable(ref m) if m.contains("hash key `pk` (S) and range key `sk` (S)")),
            "{error}"
        );
        let missing = DynamoLedger::open(client, "no-such-table").await.err().expect("refused");
        assert!(matches!(missing, LedgerError::Unavailable(ref m) if m.contains("no-such-table")), "{missing}");
    }
}

async fn job_records_round_trip_and_are_replaced(backend: Backend) {
    let ledger = &backend.ledger;
    assert_eq!(ledger.job("01-unknown").await.unwrap(), None);
    let mut job = JobRecord {
        id: "01-job".into(),
        state: JobState::Running,
        promotion: None,
        detail: None,
        error: None,
        updated_at_ms: 1,
    };
    ledger.put_job(job.clone()).await.unwrap();
    assert_eq!(ledger.job("01-job").await.unwrap().as_ref(), Some(&job));
    job.state = JobState::Parked;
    job.promotion = Some(promotion_id(PIPELINE, "prod", "sha256:aa"));
    job.detail = Some("waiting for approval (0 of 2)".into());
    job.updated_at_ms = 2;
    ledger.put_job(job.clone()).await.unwrap();
    assert_eq!(ledger.job("01-job").await.unwrap(), Some(job));
}
