//! [`Ledger`] in one DynamoDB table (single-table design, no secondary index, no transactions).
//!
//! The table: hash key `pk` (S), range key `sk` (S); TTL attribute `expires_at` (Unix seconds),
//! set only on replay-guard entries (records and environments are history and never expire).
//! Items (names escaped so a `#` in them cannot forge another key):
//!
//! | pk | sk | what |
//! |---|---|---|
//! | `P#{id}` | `PROMOTION` | the record (JSON, without approvals), `version`, `order_sk`, `parked` |
//! | `P#{id}` | `APPROVAL#{by}` | one approval: `by`, `at_ms` |
//! | `H#{pipeline}` | `{created_at_ms:020}#{id}` | history index entry: `id`, `stage` |
//! | `PARKED` | `{created_at_ms:020}#{id}` | parked index entry: `id`, `pipeline` |
//! | `E#{pipeline}#{stage}` | `ENTRY#{seq:020}` | one environment entry, `seq` |
//! | `D#{pipeline}#{stage}` | `{at_ms:020}#{uuid}` | one deployment report |
//! | `SEEN#{sha256}` | `SEEN` | a generic-sender signature already accepted, `expires_at` (TTL) |
//!
//! Every write that must not be lost to a concurrent one is a single conditional `PutItem`:
//!
//! - `set_current` puts `ENTRY#{n+1}` only if absent, `n` being the newest entry it read. Two
//!   workers racing to record the same promotion both read entry `n`; one put succeeds, the
//!   other's condition fails, it re-reads, finds its digest current and returns `Ok` without
//!   writing: the entry is recorded once. Racing different digests each get their own `seq`.
//! - `approve` puts `APPROVAL#{by}` only if absent: once per person, however many at once.
//! - `put_promotion` puts the record only if its `version` is still the one read (else it
//!   re-reads and tries again). The history and parked index entries are written after it and
//!   are hints: readers keep an entry only if the record's `order_sk` (and `parked`) still agree,
//!   so an index entry left behind by a race or a crash is never shown; a writer that deleted an
//!   old entry puts the entries of the record as it is then, so a slow delete cannot remove a
//!   newer writer's entry for good.
//!
//! (No `TransactWriteItems`: nothing needs it, and moto, which the tests run against, restores a
//! whole-table snapshot when a transaction fails, erasing concurrent writes.)

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, KeyType};

use crate::intake::replay::{ReplayError, ReplayFuture, SeenSignatures};

use super::{
    Approval, DeploymentRecord, EnvironmentEntry, EnvironmentState, JobRecord, Ledger, LedgerError, LedgerFuture,
    PromotionRecord,
};

type Item = HashMap<String, AttributeValue>;

/// How often a conditional write lost to a concurrent one is tried again.
const MAX_RACES: usize = 32;
/// Index entries read per query page.
const PAGE: usize = 100;

pub struct DynamoLedger {
    client: Client,
    table: String,
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

    /// Puts `item`; with a `condition`, `Ok(false)` when the condition failed (a lost race).
    async fn put(&self, item: Item, condition: Option<(&str, Item)>) -> Result<bool, LedgerError> {
        let what = format!("writing {} in {}", key_of(&item), self.table);
        let mut request = self.client.put_item().table_name(&self.table).set_item(Some(item));
        if let Some((expression, values)) = condition {
            request = request.condition_expression(expression);
            if !values.is_empty() {
                request = request.set_expression_attribute_values(Some(values));
            }
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(false),
            Err(e) => Err(unavailable(&what, e)),
        }
    }

    async fn delete(&self, pk: &str, sk: &str) -> Result<(), LedgerError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .send()
            .await
            .map_err(|e| unavailable(&format!("deleting {pk}/{sk} from {}", self.table), e))?;
        Ok(())
    }

    /// One page of partition `pk` (sort keys starting with `prefix`), and where the next starts.
    async fn page(
        &self,
        pk: &str,
        prefix: &str,
        newest_first: bool,
        size: usize,
        start: Option<Item>,
    ) -> Result<(Vec<Item>, Option<Item>), LedgerError> {
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
            .limit(size.clamp(1, PAGE) as i32)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| unavailable(&format!("querying {pk} in {}", self.table), e))?;
        let next = output.last_evaluated_key.filter(|key| !key.is_empty());
        Ok((output.items.unwrap_or_default(), next))
    }

    /// Up to `limit` items of partition `pk` whose sort key starts with `prefix`, in sort-key
    /// order (or reversed).
    async fn query(&self, pk: &str, prefix: &str, newest_first: bool, limit: usize) -> Result<Vec<Item>, LedgerError> {
        let mut items = Vec::new();
        let mut start = None;
        while items.len() < limit {
            let (page, next) = self.page(pk, prefix, newest_first, limit - items.len(), start.take()).await?;
            items.extend(page.into_iter().take(limit - items.len()));
            match next {
                Some(next) => start = Some(next),
                None => break,
            }
        }
        Ok(items)
    }

    /// Records named by the index partition `pk` (history or parked), in its order, that pass
    /// `filter` and that the record itself confirms (same `order_sk`; still parked if `parked`).
    async fn indexed_records(
        &self,
        pk: &str,
        newest_first: bool,
        limit: usize,
        parked: bool,
        filter: impl Fn(&Item) -> bool,
    ) -> Result<Vec<PromotionRecord>, LedgerError> {
        let mut records = Vec::new();
        let mut start = None;
        loop {
            let (page, next) = self.page(pk, "", newest_first, PAGE, start.take()).await?;
            for entry in page.iter().filter(|entry| filter(entry)) {
                if records.len() >= limit {
                    return Ok(records);
                }
                let Some(record) = self.get(&promotion_pk(&string(entry, "id")?), "PROMOTION").await? else {
                    continue;
                };
                let current = string(&record, "order_sk")? == string(entry, "sk")?;
                let still_parked = !parked || matches!(record.get("parked"), Some(AttributeValue::Bool(true)));
                if current && still_parked {
                    records.push(self.with_approvals(&record).await?);
                }
            }
            match next {
                Some(next) if records.len() < limit => start = Some(next),
                _ => return Ok(records),
            }
        }
    }

    async fn approvals(&self, id: &str) -> Result<Vec<Approval>, LedgerError> {
        let items = self.query(&promotion_pk(id), "APPROVAL#", false, usize::MAX).await?;
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

    /// One attempt: `Ok(false)` when another writer changed the record since it was read.
    async fn put_promotion_once(&self, record: &PromotionRecord) -> Result<bool, LedgerError> {
        let pk = promotion_pk(&record.id);
        let old = self.get(&pk, "PROMOTION").await?;
        let mut stored = record.clone();
        stored.approvals.clear();
        let json = serde_json::to_string(&stored)
            .map_err(|e| LedgerError::Unavailable(format!("serializing promotion {}: {e}", record.id)))?;
        let order_sk = format!("{}#{}", sortable(record.created_at_ms), escape(&record.id));
        let parked = record.state.is_parked();
        let item = Item::from([
            ("pk".into(), s(&pk)),
            ("sk".into(), s("PROMOTION")),
            ("record".into(), s(&json)),
            ("order_sk".into(), s(&order_sk)),
            ("parked".into(), AttributeValue::Bool(parked)),
            ("pipeline".into(), s(&record.pipeline)),
            ("stage".into(), s(&record.stage)),
            ("version".into(), n(old.as_ref().map(|o| number(o, "version")).transpose()?.unwrap_or(0) + 1)),
        ]);
        let condition = match &old {
            Some(old) => ("version = :version", Item::from([(":version".into(), n(number(old, "version")?))])),
            None => ("attribute_not_exists(pk)", Item::new()),
        };
        if !self.put(item, Some(condition)).await? {
            return Ok(false);
        }
        // The index entries follow the record; readers check them against it.
        self.put_index_entries(&record.id, &record.pipeline, &record.stage, &order_sk, parked).await?;
        if let Some(old) = &old {
            let old_sk = string(old, "order_sk")?;
            let was_parked = matches!(old.get("parked"), Some(AttributeValue::Bool(true)));
            let mut deleted = false;
            if old_sk != order_sk {
                self.delete(&format!("H#{}", escape(&record.pipeline)), &old_sk).await?;
                deleted = true;
            }
            if was_parked && (!parked || old_sk != order_sk) {
                self.delete("PARKED", &old_sk).await?;
                deleted = true;
            }
            // A slow delete may have removed the entry a newer writer just put under the same
            // key: put the entries of whatever the record is now (idempotent; an entry that is
            // stale by then is skipped by readers).
            if deleted && let Some(now) = self.get(&pk, "PROMOTION").await? {
                let now_parked = matches!(now.get("parked"), Some(AttributeValue::Bool(true)));
                let (pipeline, stage) = (string(&now, "pipeline")?, string(&now, "stage")?);
                self.put_index_entries(&record.id, &pipeline, &stage, &string(&now, "order_sk")?, now_parked).await?;
            }
        }
        // Approvals carried by the record are added once per person, like `approve`.
        for approval in &record.approvals {
            self.add_approval(&record.id, &approval.by, approval.at_ms).await?;
        }
        Ok(true)
    }

    async fn put_index_entries(
        &self,
        id: &str,
        pipeline: &str,
        stage: &str,
        order_sk: &str,
        parked: bool,
    ) -> Result<(), LedgerError> {
        let history = Item::from([
            ("pk".into(), s(&format!("H#{}", escape(pipeline)))),
            ("sk".into(), s(order_sk)),
            ("id".into(), s(id)),
            ("stage".into(), s(stage)),
        ]);
        self.put(history, None).await?;
        if parked {
            let entry = Item::from([
                ("pk".into(), s("PARKED")),
                ("sk".into(), s(order_sk)),
                ("id".into(), s(id)),
                ("pipeline".into(), s(pipeline)),
            ]);
            self.put(entry, None).await?;
        }
        Ok(())
    }

    /// Puts `by`'s approval unless that person approved already.
    async fn add_approval(&self, id: &str, by: &str, at_ms: i64) -> Result<(), LedgerError> {
        let item = Item::from([
            ("pk".into(), s(&promotion_pk(id))),
            ("sk".into(), s(&format!("APPROVAL#{}", escape(by)))),
            ("by".into(), s(by)),
            ("at_ms".into(), n(at_ms)),
        ]);
        self.put(item, Some(("attribute_not_exists(pk)", Item::new()))).await?;
        Ok(())
    }

    async fn store_promotion(&self, record: PromotionRecord) -> Result<(), LedgerError> {
        for _ in 0..MAX_RACES {
            if self.put_promotion_once(&record).await? {
                return Ok(());
            }
        }
        Err(contended(&format!("promotion {}", record.id)))
    }

    async fn read_promotion(&self, id: &str) -> Result<Option<PromotionRecord>, LedgerError> {
        match self.get(&promotion_pk(id), "PROMOTION").await? {
            Some(item) => Ok(Some(self.with_approvals(&item).await?)),
            None => Ok(None),
        }
    }

    async fn approve_promotion(&self, id: &str, by: &str, at_ms: i64) -> Result<Vec<Approval>, LedgerError> {
        // Promotions are never deleted: once seen, it stays there for the put below.
        if self.get(&promotion_pk(id), "PROMOTION").await?.is_none() {
            return Err(LedgerError::UnknownPromotion(id.to_string()));
        }
        self.add_approval(id, by, at_ms).await?;
        self.approvals(id).await
    }

    async fn read_history(
        &self,
        pipeline: &str,
        stage: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PromotionRecord>, LedgerError> {
        self.indexed_records(&format!("H#{}", escape(pipeline)), true, limit, false, |entry| {
            stage.is_none_or(|stage| string(entry, "stage").is_ok_and(|s| s == stage))
        })
        .await
    }

    async fn read_parked(&self, pipeline: Option<&str>) -> Result<Vec<PromotionRecord>, LedgerError> {
        self.indexed_records("PARKED", false, usize::MAX, true, |entry| {
            pipeline.is_none_or(|pipeline| string(entry, "pipeline").is_ok_and(|p| p == pipeline))
        })
        .await
    }

    async fn write_current(&self, pipeline: &str, stage: &str, entry: EnvironmentEntry) -> Result<(), LedgerError> {
        let pk = environment_pk(pipeline, stage);
        let json = serde_json::to_string(&entry)
            .map_err(|e| LedgerError::Unavailable(format!("serializing an environment entry: {e}")))?;
        for _ in 0..MAX_RACES {
            let newest = self.query(&pk, "ENTRY#", true, 1).await?;
            let seq = match newest.first() {
                Some(item) => {
                    if parse_entry(item, &self.table)?.digest == entry.digest {
                        // Already current (a redelivery, or the loser of a race): nothing changes.
                        return Ok(());
                    }
                    number(item, "seq")?
                }
                None => 0,
            };
            let item = Item::from([
                ("pk".into(), s(&pk)),
                ("sk".into(), s(&format!("ENTRY#{}", sortable(seq + 1)))),
                ("seq".into(), n(seq + 1)),
                ("entry".into(), s(&json)),
            ]);
            if self.put(item, Some(("attribute_not_exists(pk)", Item::new()))).await? {
                return Ok(());
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
        let items = self.query(&environment_pk(pipeline, stage), "ENTRY#", true, limit).await?;
        items.iter().map(|item| parse_entry(item, &self.table)).collect()
    }

    async fn write_deployment(&self, record: DeploymentRecord) -> Result<(), LedgerError> {
        let json = serde_json::to_string(&record)
            .map_err(|e| LedgerError::Unavailable(format!("serializing a deployment report: {e}")))?;
        let item = Item::from([
            ("pk".into(), s(&deployments_pk(&record.pipeline, &record.stage))),
            ("sk".into(), s(&format!("{}#{}", sortable(record.at_ms), uuid::Uuid::new_v4()))),
            ("record".into(), s(&json)),
        ]);
        self.put(item, None).await?;
        Ok(())
    }

    async fn read_deployments(
        &self,
        pipeline: &str,
        stage: &str,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>, LedgerError> {
        let items = self.query(&deployments_pk(pipeline, stage), "", true, limit).await?;
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

    fn put_job(&self, record: JobRecord) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            let json = serde_json::to_string(&record)
                .map_err(|e| LedgerError::Unavailable(format!("job {} does not serialize: {e}", record.id)))?;
            let item = Item::from([
                ("pk".to_string(), s(&format!("JOB#{}", record.id))),
                ("sk".to_string(), s("JOB")),
                ("record".to_string(), s(&json)),
            ]);
            self.put(item, None).await.map(|_| ())
        })
    }

    fn job(&self, id: &str) -> LedgerFuture<'_, Option<JobRecord>> {
        let pk = format!("JOB#{id}");
        Box::pin(async move {
            let Some(item) = self.get(&pk, "JOB").await? else { return Ok(None) };
            let json = string(&item, "record")?;
            serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| LedgerError::Unavailable(format!("{pk} in the ledger is not a job record: {e}")))
        })
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

fn promotion_pk(id: &str) -> String {
    format!("P#{}", escape(id))
}

fn key_of(item: &Item) -> String {
    let part = |name| match item.get(name) {
        Some(AttributeValue::S(value)) => value.as_str(),
        _ => "?",
    };
    format!("{}/{}", part("pk"), part("sk"))
}

fn parse_entry(item: &Item, table: &str) -> Result<EnvironmentEntry, LedgerError> {
    serde_json::from_str(&string(item, "entry")?)
        .map_err(|e| LedgerError::Unavailable(format!("an environment entry in {table} does not parse: {e}")))
}

fn environment_pk(pipeline: &str, stage: &str) -> String {
    format!("E#{}#{}", escape(pipeline), escape(stage))
}

fn deployments_pk(pipeline: &str, stage: &str) -> String {
    format!("D#{}#{}", escape(pipeline), escape(stage))
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
