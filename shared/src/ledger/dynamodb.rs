//! [`Ledger`] in one DynamoDB table (single-table design, no secondary index).
//!
//! The table: hash key `pk` (S), range key `sk` (S); TTL attribute `expires_at` (Unix seconds),
//! set only on replay-guard entries (records and environments are history and never expire).
//! Items (`{…}` escaped so `#` in names cannot collide):
//!
//! | pk | sk | what |
//! |---|---|---|
//! | `P#{id}` | `PROMOTION` | the record (JSON, without approvals), `version` |
//! | `P#{id}` | `APPROVAL#{by}` | one approval: `by`, `at_ms` |
//! | `H#{pipeline}` | `{created_at_ms:020}#{id}` | the record again, for history (newest first) |
//! | `PARKED` | `{created_at_ms:020}#{id}` | the record, while it is parked (oldest first) |
//! | `E#{pipeline}#{stage}` | `HEAD` | `seq` and `digest` of the current entry |
//! | `E#{pipeline}#{stage}` | `ENTRY#{seq:020}` | one environment entry |
//! | `D#{pipeline}#{stage}` | `{at_ms:020}#{uuid}` | one deployment report |
//! | `SEEN#{sha256}` | `SEEN` | a generic-sender signature already accepted, `expires_at` (TTL) |
//!
//! Conditional writes: `set_current` writes `HEAD` only if its `seq` is still the one read
//! (or it does not exist yet) and the new `ENTRY` only if absent, in one transaction. Two workers
//! racing to record the same promotion both read the same `HEAD`; one transaction wins, the
//! other is cancelled, re-reads, finds its digest already current and returns `Ok` without
//! writing: the entry is recorded once. `approve` puts `APPROVAL#{by}` only if absent, beside a
//! condition that the promotion exists: once per person, however many approve at once.
//! `put_promotion` writes the record and its history/parked copies in one transaction,
//! conditional on the `version` it read, and retries on a lost race, so the copies never
//! disagree with the record.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, KeyType, Put, TransactWriteItem};

use crate::intake::replay::{ReplayError, ReplayFuture, SeenSignatures};

use super::{
    Approval, DeploymentRecord, EnvironmentEntry, EnvironmentState, Ledger, LedgerError, LedgerFuture, PromotionRecord,
};

type Item = HashMap<String, AttributeValue>;

/// How often a conditional write lost to a concurrent one is tried again.
const MAX_RACES: usize = 16;

pub struct DynamoLedger {
    client: Client,
    table: String,
}

/// A transaction the service refused: a condition failed (which one, by index) or another error.
enum Refused {
    Conditions(Vec<bool>),
    Failed(LedgerError),
}

impl DynamoLedger {
    /// Checks that `table` exists with the key schema Ferry writes (`pk`, `sk`, both strings).
    pub async fn open(client: Client, table: &str) -> Result<Self, LedgerError> {
        let described =
            client.describe_table().table_name(table).send().await.map_err(|e| {
                unavailable(&format!("reading DynamoDB table {table} (does it exist in this region?)"), e)
            })?;
        let keys: Vec<(String, KeyType)> = described
            .table()
            .map(|t| t.key_schema().iter().map(|k| (k.attribute_name().to_string(), k.key_type().clone())).collect())
            .unwrap_or_default();
        let expected = vec![("pk".to_string(), KeyType::Hash), ("sk".to_string(), KeyType::Range)];
        if keys != expected {
            return Err(LedgerError::Unavailable(format!(
                "DynamoDB table {table} has key schema {keys:?}; Ferry needs hash key `pk` (S) and range key `sk` (S)"
            )));
        }
        Ok(DynamoLedger { client, table: table.to_string() })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, LedgerError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(&format!("reading {pk}/{sk} from {}", self.table), e))?;
        Ok(output.item)
    }

    /// Items of partition `pk` whose sort key starts with `prefix`, in sort-key order (or
    /// reversed), until `keep` has taken `limit` of them.
    async fn query(
        &self,
        pk: &str,
        prefix: &str,
        newest_first: bool,
        limit: usize,
        mut keep: impl FnMut(&Item) -> bool,
    ) -> Result<Vec<Item>, LedgerError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        while items.len() < limit {
            let mut request = self.client.query().table_name(&self.table).expression_attribute_values(":pk", s(pk));
            request = if prefix.is_empty() {
                request.key_condition_expression("pk = :pk")
            } else {
                request
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":prefix", s(prefix))
            };
            let output = request
                .scan_index_forward(!newest_first)
                .consistent_read(true)
                .limit(page_size(limit - items.len()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| unavailable(&format!("querying {pk} in {}", self.table), e))?;
            for item in output.items.unwrap_or_default() {
                if items.len() < limit && keep(&item) {
                    items.push(item);
                }
            }
            match output.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(items)
    }

    async fn transact(&self, what: &str, items: Vec<TransactWriteItem>) -> Result<(), Refused> {
        match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), TransactWriteItemsError::TransactionCanceledException(_)) =>
            {
                let TransactWriteItemsError::TransactionCanceledException(cancelled) = e.err() else { unreachable!() };
                let failed: Vec<bool> = cancelled
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code() == Some("ConditionalCheckFailed"))
                    .collect();
                if failed.iter().any(|f| *f) {
                    Err(Refused::Conditions(failed))
                } else {
                    // Cancelled for another reason (a concurrent transaction on the same items):
                    // as good as a lost race, try again.
                    Err(Refused::Conditions(Vec::new()))
                }
            }
            Err(e) => Err(Refused::Failed(unavailable(&format!("{what} in {}", self.table), e))),
        }
    }

    async fn approvals(&self, id: &str) -> Result<Vec<Approval>, LedgerError> {
        let items = self.query(&format!("P#{}", escape(id)), "APPROVAL#", false, usize::MAX, |_| true).await?;
        let mut approvals: Vec<Approval> = items
            .iter()
            .map(|item| Ok(Approval { by: string(item, "by")?, at_ms: number(item, "at_ms")? }))
            .collect::<Result<_, LedgerError>>()?;
        approvals.sort_by(|a, b| (a.at_ms, &a.by).cmp(&(b.at_ms, &b.by)));
        Ok(approvals)
    }

    /// A stored record, with its approvals.
    async fn with_approvals(&self, item: &Item) -> Result<PromotionRecord, LedgerError> {
        let mut record: PromotionRecord = serde_json::from_str(&string(item, "record")?)
            .map_err(|e| LedgerError::Unavailable(format!("a promotion in {} does not parse: {e}", self.table)))?;
        record.approvals = self.approvals(&record.id).await?;
        Ok(record)
    }

    async fn put_promotion_once(&self, record: &PromotionRecord) -> Result<(), Refused> {
        let pk = format!("P#{}", escape(&record.id));
        let old = self.get(&pk, "PROMOTION").await.map_err(Refused::Failed)?;
        let mut stored = record.clone();
        stored.approvals.clear();
        let json = serde_json::to_string(&stored).map_err(|e| {
            Refused::Failed(LedgerError::Unavailable(format!("serializing promotion {}: {e}", record.id)))
        })?;
        let history_pk = format!("H#{}", escape(&record.pipeline));
        let order_sk = format!("{}#{}", sortable(record.created_at_ms), escape(&record.id));
        let version = match &old {
            Some(item) => number(item, "version").map_err(Refused::Failed)?,
            None => 0,
        };
        let mut main = Put::builder()
            .table_name(&self.table)
            .item("pk", s(&pk))
            .item("sk", s("PROMOTION"))
            .item("record", s(&json))
            .item("history_pk", s(&history_pk))
            .item("order_sk", s(&order_sk))
            .item("parked", AttributeValue::Bool(record.state.is_parked()))
            .item("version", n(version + 1));
        main = match &old {
            Some(_) => {
                main.condition_expression("version = :version").expression_attribute_values(":version", n(version))
            }
            None => main.condition_expression("attribute_not_exists(pk)"),
        };
        let mut items = vec![TransactWriteItem::builder().put(built(main.build())?).build()];
        items.push(put(
            &self.table,
            [("pk", s(&history_pk)), ("sk", s(&order_sk)), ("stage", s(&record.stage)), ("record", s(&json))],
        )?);
        if record.state.is_parked() {
            items.push(put(
                &self.table,
                [("pk", s("PARKED")), ("sk", s(&order_sk)), ("pipeline", s(&record.pipeline)), ("record", s(&json))],
            )?);
        }
        if let Some(old) = &old {
            let old_history = (
                string(old, "history_pk").map_err(Refused::Failed)?,
                string(old, "order_sk").map_err(Refused::Failed)?,
            );
            if old_history != (history_pk.clone(), order_sk.clone()) {
                items.push(delete(&self.table, &old_history.0, &old_history.1)?);
            }
            let was_parked = matches!(old.get("parked"), Some(AttributeValue::Bool(true)));
            if was_parked && (!record.state.is_parked() || old_history.1 != order_sk) {
                items.push(delete(&self.table, "PARKED", &old_history.1)?);
            }
        }
        self.transact(&format!("storing promotion {}", record.id), items).await?;
        // Approvals carried by the record are added once per person, like `approve`.
        for approval in &record.approvals {
            self.add_approval(&pk, &approval.by, approval.at_ms).await.map_err(Refused::Failed)?;
        }
        Ok(())
    }

    async fn add_approval(&self, pk: &str, by: &str, at_ms: i64) -> Result<(), LedgerError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("sk", s(&format!("APPROVAL#{}", escape(by))))
            .item("by", s(by))
            .item("at_ms", n(at_ms))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(()),
            Err(e) => Err(unavailable(&format!("recording approval by {by} in {}", self.table), e)),
        }
    }

    async fn store_promotion(&self, record: PromotionRecord) -> Result<(), LedgerError> {
        for _ in 0..MAX_RACES {
            match self.put_promotion_once(&record).await {
                Ok(()) => return Ok(()),
                Err(Refused::Conditions(_)) => continue,
                Err(Refused::Failed(e)) => return Err(e),
            }
        }
        Err(contended(&format!("promotion {}", record.id)))
    }

    async fn read_promotion(&self, id: &str) -> Result<Option<PromotionRecord>, LedgerError> {
        match self.get(&format!("P#{}", escape(id)), "PROMOTION").await? {
            Some(item) => Ok(Some(self.with_approvals(&item).await?)),
            None => Ok(None),
        }
    }

    async fn approve_promotion(&self, id: &str, by: &str, at_ms: i64) -> Result<Vec<Approval>, LedgerError> {
        let pk = format!("P#{}", escape(id));
        let exists = ConditionCheck::builder()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s("PROMOTION"))
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(|e| LedgerError::Unavailable(format!("building the approval of {id}: {e}")))?;
        let approval = Put::builder()
            .table_name(&self.table)
            .item("pk", s(&pk))
            .item("sk", s(&format!("APPROVAL#{}", escape(by))))
            .item("by", s(by))
            .item("at_ms", n(at_ms))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| LedgerError::Unavailable(format!("building the approval of {id}: {e}")))?;
        let approval = TransactWriteItem::builder().put(approval).build();
        let items = vec![TransactWriteItem::builder().condition_check(exists).build(), approval];
        match self.transact(&format!("approving promotion {id}"), items).await {
            Ok(()) => {}
            Err(Refused::Conditions(failed)) if failed.first() == Some(&true) => {
                return Err(LedgerError::UnknownPromotion(id.to_string()));
            }
            // This person had approved already: counted once.
            Err(Refused::Conditions(failed)) if failed.get(1) == Some(&true) => {}
            Err(Refused::Conditions(_)) => return Err(contended(&format!("the approvals of {id}"))),
            Err(Refused::Failed(e)) => return Err(e),
        }
        self.approvals(id).await
    }

    async fn read_history(
        &self,
        pipeline: &str,
        stage: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PromotionRecord>, LedgerError> {
        let items = self
            .query(&format!("H#{}", escape(pipeline)), "", true, limit, |item| {
                stage.is_none_or(|stage| string(item, "stage").is_ok_and(|s| s == stage))
            })
            .await?;
        let mut records = Vec::with_capacity(items.len());
        for item in &items {
            records.push(self.with_approvals(item).await?);
        }
        Ok(records)
    }

    async fn read_parked(&self, pipeline: Option<&str>) -> Result<Vec<PromotionRecord>, LedgerError> {
        let items = self
            .query("PARKED", "", false, usize::MAX, |item| {
                pipeline.is_none_or(|pipeline| string(item, "pipeline").is_ok_and(|p| p == pipeline))
            })
            .await?;
        let mut records = Vec::with_capacity(items.len());
        for item in &items {
            records.push(self.with_approvals(item).await?);
        }
        Ok(records)
    }

    async fn write_current(&self, pipeline: &str, stage: &str, entry: EnvironmentEntry) -> Result<(), LedgerError> {
        let pk = environment_pk(pipeline, stage);
        let json = serde_json::to_string(&entry)
            .map_err(|e| LedgerError::Unavailable(format!("serializing an environment entry: {e}")))?;
        for _ in 0..MAX_RACES {
            let head = self.get(&pk, "HEAD").await?;
            let seq = match &head {
                Some(head) => {
                    if string(head, "digest")? == entry.digest {
                        // Already current (a redelivery, or the loser of a race): nothing changes.
                        return Ok(());
                    }
                    number(head, "seq")?
                }
                None => 0,
            };
            let mut new_head = Put::builder()
                .table_name(&self.table)
                .item("pk", s(&pk))
                .item("sk", s("HEAD"))
                .item("seq", n(seq + 1))
                .item("digest", s(&entry.digest));
            new_head = match head {
                Some(_) => new_head.condition_expression("seq = :seq").expression_attribute_values(":seq", n(seq)),
                None => new_head.condition_expression("attribute_not_exists(pk)"),
            };
            let new_entry = Put::builder()
                .table_name(&self.table)
                .item("pk", s(&pk))
                .item("sk", s(&format!("ENTRY#{}", sortable(seq + 1))))
                .item("entry", s(&json))
                .condition_expression("attribute_not_exists(pk)");
            let items = vec![
                TransactWriteItem::builder().put(built(new_head.build()).map_err(refused_error)?).build(),
                TransactWriteItem::builder().put(built(new_entry.build()).map_err(refused_error)?).build(),
            ];
            match self.transact(&format!("setting the current digest of {pipeline}/{stage}"), items).await {
                Ok(()) => return Ok(()),
                Err(Refused::Conditions(_)) => continue,
                Err(Refused::Failed(e)) => return Err(e),
            }
        }
        Err(contended(&format!("stage {stage} of pipeline {pipeline}")))
    }

    async fn read_entries(
        &self,
        pipeline: &str,
        stage: &str,
        limit: usize,
    ) -> Result<Vec<EnvironmentEntry>, LedgerError> {
        let items = self.query(&environment_pk(pipeline, stage), "ENTRY#", true, limit, |_| true).await?;
        items
            .iter()
            .map(|item| {
                serde_json::from_str(&string(item, "entry")?).map_err(|e| {
                    LedgerError::Unavailable(format!("an environment entry in {} does not parse: {e}", self.table))
                })
            })
            .collect()
    }

    async fn write_deployment(&self, record: DeploymentRecord) -> Result<(), LedgerError> {
        let json = serde_json::to_string(&record)
            .map_err(|e| LedgerError::Unavailable(format!("serializing a deployment report: {e}")))?;
        let sk = format!("{}#{}", sortable(record.at_ms), uuid::Uuid::new_v4());
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&deployments_pk(&record.pipeline, &record.stage)))
            .item("sk", s(&sk))
            .item("record", s(&json))
            .send()
            .await
            .map_err(|e| unavailable(&format!("recording a deployment in {}", self.table), e))?;
        Ok(())
    }

    async fn read_deployments(
        &self,
        pipeline: &str,
        stage: &str,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>, LedgerError> {
        let items = self.query(&deployments_pk(pipeline, stage), "", true, limit, |_| true).await?;
        items
            .iter()
            .map(|item| {
                serde_json::from_str(&string(item, "record")?).map_err(|e| {
                    LedgerError::Unavailable(format!("a deployment in {} does not parse: {e}", self.table))
                })
            })
            .collect()
    }
}

/// Generic-sender signatures: `SEEN#{sha256 of the signature}`/`SEEN` with `expires_at`. The
/// put is conditional: absent, or expired (TTL deletes lazily, up to days later, so an expired
/// item still present counts as absent). Of two instances racing on one signature, one put
/// succeeds; the other's condition fails and it answers "replay".
impl SeenSignatures for DynamoLedger {
    fn first_use(&self, signature: &str, expires_at_unix_secs: i64) -> ReplayFuture<'_, bool> {
        let pk = seen_pk(signature);
        Box::pin(async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(&pk))
                .item("sk", s("SEEN"))
                .item("expires_at", n(expires_at_unix_secs))
                .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
                .expression_attribute_values(":now", n(now))
                .send()
                .await;
            match result {
                Ok(_) => Ok(true),
                Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(false),
                Err(e) => Err(ReplayError::Unavailable(format!(
                    "recording a webhook signature in {}: {}",
                    self.table,
                    describe(&e)
                ))),
            }
        })
    }

    fn forget(&self, signature: &str) -> ReplayFuture<'_, ()> {
        let pk = seen_pk(signature);
        Box::pin(async move {
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(&pk))
                .key("sk", s("SEEN"))
                .send()
                .await
                .map_err(|e| {
                    ReplayError::Unavailable(format!(
                        "forgetting a webhook signature in {}: {}",
                        self.table,
                        describe(&e)
                    ))
                })?;
            Ok(())
        })
    }
}

fn seen_pk(signature: &str) -> String {
    use sha2::{Digest as _, Sha256};
    format!("SEEN#{}", hex::encode(Sha256::digest(signature.as_bytes())))
}

impl Ledger for DynamoLedger {
    fn put_promotion(&self, record: PromotionRecord) -> LedgerFuture<'_, ()> {
        Box::pin(self.store_promotion(record))
    }

    fn promotion(&self, id: &str) -> LedgerFuture<'_, Option<PromotionRecord>> {
        let id = id.to_string();
        Box::pin(async move { self.read_promotion(&id).await })
    }

    fn approve(&self, id: &str, by: &str, at_ms: i64) -> LedgerFuture<'_, Vec<Approval>> {
        let (id, by) = (id.to_string(), by.to_string());
        Box::pin(async move { self.approve_promotion(&id, &by, at_ms).await })
    }

    fn history(&self, pipeline: &str, stage: Option<&str>, limit: usize) -> LedgerFuture<'_, Vec<PromotionRecord>> {
        let (pipeline, stage) = (pipeline.to_string(), stage.map(str::to_string));
        Box::pin(async move { self.read_history(&pipeline, stage.as_deref(), limit).await })
    }

    fn parked(&self, pipeline: Option<&str>) -> LedgerFuture<'_, Vec<PromotionRecord>> {
        let pipeline = pipeline.map(str::to_string);
        Box::pin(async move { self.read_parked(pipeline.as_deref()).await })
    }

    fn set_current(&self, pipeline: &str, stage: &str, entry: EnvironmentEntry) -> LedgerFuture<'_, ()> {
        let (pipeline, stage) = (pipeline.to_string(), stage.to_string());
        Box::pin(async move { self.write_current(&pipeline, &stage, entry).await })
    }

    fn environment(&self, pipeline: &str, stage: &str) -> LedgerFuture<'_, Option<EnvironmentState>> {
        let (pipeline, stage) = (pipeline.to_string(), stage.to_string());
        Box::pin(async move {
            let mut entries = self.read_entries(&pipeline, &stage, 2).await?.into_iter();
            Ok(entries.next().map(|current| EnvironmentState { pipeline, stage, current, previous: entries.next() }))
        })
    }

    fn environment_history(
        &self,
        pipeline: &str,
        stage: &str,
        limit: usize,
    ) -> LedgerFuture<'_, Vec<EnvironmentEntry>> {
        let (pipeline, stage) = (pipeline.to_string(), stage.to_string());
        Box::pin(async move { self.read_entries(&pipeline, &stage, limit).await })
    }

    fn record_deployment(&self, record: DeploymentRecord) -> LedgerFuture<'_, ()> {
        Box::pin(self.write_deployment(record))
    }

    fn deployments(&self, pipeline: &str, stage: &str, limit: usize) -> LedgerFuture<'_, Vec<DeploymentRecord>> {
        let (pipeline, stage) = (pipeline.to_string(), stage.to_string());
        Box::pin(async move { self.read_deployments(&pipeline, &stage, limit).await })
    }
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_string())
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn string(item: &Item, name: &str) -> Result<String, LedgerError> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Ok(value.clone()),
        _ => Err(LedgerError::Unavailable(format!("a ledger item lacks the string attribute `{name}`"))),
    }
}

fn number(item: &Item, name: &str) -> Result<i64, LedgerError> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value
            .parse()
            .map_err(|_| LedgerError::Unavailable(format!("ledger attribute `{name}` is not an integer: {value}"))),
        _ => Err(LedgerError::Unavailable(format!("a ledger item lacks the number attribute `{name}`"))),
    }
}

fn put<const N: usize>(table: &str, item: [(&str, AttributeValue); N]) -> Result<TransactWriteItem, Refused> {
    let mut builder = Put::builder().table_name(table);
    for (name, value) in item {
        builder = builder.item(name, value);
    }
    Ok(TransactWriteItem::builder().put(built(builder.build())?).build())
}

fn delete(table: &str, pk: &str, sk: &str) -> Result<TransactWriteItem, Refused> {
    let delete = Delete::builder().table_name(table).key("pk", s(pk)).key("sk", s(sk)).build();
    Ok(TransactWriteItem::builder().delete(built(delete)?).build())
}

fn built<T>(result: Result<T, aws_sdk_dynamodb::error::BuildError>) -> Result<T, Refused> {
    result.map_err(|e| Refused::Failed(LedgerError::Unavailable(format!("building a DynamoDB request: {e}"))))
}

fn refused_error(refused: Refused) -> LedgerError {
    match refused {
        Refused::Failed(e) => e,
        Refused::Conditions(_) => LedgerError::Unavailable("a DynamoDB condition failed".into()),
    }
}

fn unavailable<E, R>(doing: &str, error: SdkError<E, R>) -> LedgerError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    LedgerError::Unavailable(format!("{doing}: {}", describe(&error)))
}

/// The service's own code and message when it answered, the whole error chain otherwise.
fn describe<E, R>(error: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match (error, error.code()) {
        (SdkError::ServiceError(_), Some(code)) => format!("{code}: {}", error.message().unwrap_or("(no message)")),
        _ => DisplayErrorContext(error).to_string(),
    }
}

fn contended(what: &str) -> LedgerError {
    LedgerError::Unavailable(format!("{what} kept changing under {MAX_RACES} attempts to write it; try again"))
}

/// Zero-padded, so sort keys order like the numbers (negative times count as 0).
fn sortable(value: i64) -> String {
    format!("{:020}", value.max(0))
}

/// Names inside keys: `#` separates key parts, so it (and `%`) is escaped.
fn escape(name: &str) -> String {
    name.replace('%', "%25").replace('#', "%23")
}

fn environment_pk(pipeline: &str, stage: &str) -> String {
    format!("E#{}#{}", escape(pipeline), escape(stage))
}

fn deployments_pk(pipeline: &str, stage: &str) -> String {
    format!("D#{}#{}", escape(pipeline), escape(stage))
}

/// DynamoDB evaluates at most this many items per query page.
fn page_size(wanted: usize) -> i32 {
    wanted.clamp(1, 100) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_forge_key_parts() {
        assert_ne!(environment_pk("a#b", "c"), environment_pk("a", "b#c"));
        assert_eq!(escape("a%23"), "a%2523");
    }

    #[test]
    fn sort_keys_order_like_their_numbers() {
        assert!(sortable(9) < sortable(10));
        assert!(sortable(1_700_000_000_000) < sortable(1_800_000_000_000));
        assert_eq!(sortable(-5), sortable(0));
    }
}
