//! The promotion worker: `process(job)` turns a queued request into an image running in the
//! next environment. `ferry serve` runs it in-process; the SQS Lambda will run the same code.
//!
//! For a promotion: resolve the digest at the *source* (never trusting the payload alone; a
//! tag that moved since the event is recorded), look the promotion up in the ledger (its id is
//! derived from pipeline, stage and digest, so duplicates and redeliveries meet there), evaluate
//! the stage's gate (parking the promotion visibly when it must wait), copy digest-exact with the
//! copy engine and tag the target, notify the stage, record the result, and queue the next stage.
//! Every step is idempotent, so a job redelivered after a crash re-runs safely and finishes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::Instrument;

use crate::config::{Config, Gate, Notify, Pipeline, RepoName, Stage, tag_matches};
use crate::deploy::azure::ArmClient;
use crate::deploy::kubernetes::{AksCluster, ApiServer};
use crate::deploy::{
    AppServiceNotifier, Deployment, KubernetesNotifier, NoopNotifier, Notifier, NotifyError, WebhookNotifier,
};
use crate::error::WorkError;
use crate::intake::{Build, PromotionRequest, Sender};
use crate::job::{DeploymentJob, PromotionJob, QueuedJob};
use crate::ledger::{
    DeploymentRecord, EnvironmentEntry, GateDecision, JobRecord, JobState, Ledger, PromotionRecord, PromotionState,
    promotion_id,
};
use crate::queue::{Delivery, JobQueue};
use crate::registry::auth::Credential;
use crate::registry::client::{ClientOptions, Deadlines, HttpClients, RegistryClient, pull_scope};
use crate::registry::reference::ImageRef;
use crate::registry::{Access, CopyOptions, Digest, Location, Progress, RegistryRef, Tag, copy};
use crate::settle::{RetrySettings, Settlement, settlement};

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// What became of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Finished (promoted, or nothing to do); the job is acknowledged.
    Done(String),
    /// Waiting on a gate; the promotion is parked in the ledger and the job acknowledged.
    Parked(String),
    /// Failed; [`crate::settle::settlement`] decides by the error's class whether the job comes
    /// back after a backoff or goes to the dead letters. `promotion` names the ledger record when
    /// the digest was resolved far enough to have one.
    Failed { error: WorkError, promotion: Option<String> },
}

/// What became of one delivery, for a shell that reports to its event source (the SQS Lambda
/// reports a message that stays queued as a batch item failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub settlement: Settlement,
    /// The queue took the settlement (ack, nack or dead-letter).
    pub settled: bool,
}

impl Handled {
    /// The job must stay in the queue and come back: a retry, or a settlement the queue did not
    /// take (its lease ran out meanwhile).
    pub fn stays_queued(&self) -> bool {
        matches!(self.settlement, Settlement::Retry { .. }) || !self.settled
    }
}

/// How Ferry proves who it is to one registry: a credential fixed at start-up, or one that is
/// fetched and renewed while Ferry runs (ECR's 12-hour tokens).
#[derive(Clone)]
pub enum RegistryCredential {
    Fixed(Credential),
    #[cfg(feature = "aws")]
    Ecr(Arc<crate::registry::ecr::EcrCredentials>),
}

impl RegistryCredential {
    /// The credential to use for the next job.
    pub async fn current(&self) -> Result<Credential, WorkError> {
        match self {
            RegistryCredential::Fixed(credential) => Ok(credential.clone()),
            #[cfg(feature = "aws")]
            RegistryCredential::Ecr(ecr) => ecr.credential().await.map_err(|e| WorkError::new(e.class, e.to_string())),
        }
    }
}

/// How Ferry reaches the configured registries (and no others).
pub struct RegistrySettings {
    client: ClientOptions,
    credentials: HashMap<String, RegistryCredential>,
    /// One trust store per registry that names a `ca_cert`, one shared by the others.
    http: HttpClients,
}

impl RegistrySettings {
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let mut client = ClientOptions::default();
        let mut credentials = HashMap::new();
        for (host, registry) in &config.registries {
            if registry.plain_http {
                client.plain_http.push(api_host(host).to_string());
            }
            if let Some(path) = &registry.ca_cert {
                // Trusted for this registry alone: a private CA must not vouch for other hosts.
                client.registry_ca_certs.insert(
                    api_host(host).to_string(),
                    std::fs::read(path)
                        .map_err(|e| format!("registries.\"{host}\".ca_cert: cannot read {}: {e}", path.display()))?,
                );
            }
            if let Some(realm) = &registry.token_realm {
                client.token_realms.insert(api_host(host).to_string(), realm.clone());
            }
            let defaults = Deadlines::default();
            let deadlines = Deadlines {
                request: registry.request_deadline_secs.map(Duration::from_secs).unwrap_or(defaults.request),
                blob_min_bytes: registry.blob_min_kib.map(|kib| kib << 10).unwrap_or(defaults.blob_min_bytes),
                blob_window: registry.blob_window_secs.map(Duration::from_secs).unwrap_or(defaults.blob_window),
            };
            if deadlines.request.is_zero() || deadlines.blob_window.is_zero() {
                return Err(format!(
                    "registries.\"{host}\": request_deadline_secs and blob_window_secs must be at least 1"
                ));
            }
            client.registry_deadlines.insert(api_host(host).to_string(), deadlines);
            let key = |name: &str| format!("registries.\"{host}\".{name}");
            let username = config
                .secret(&key("username"), registry.username_env.as_ref(), registry.username_arn.as_ref())
                .map_err(|e| e.to_string())?;
            let password = config
                .secret(&key("password"), registry.password_env.as_ref(), registry.password_arn.as_ref())
                .map_err(|e| e.to_string())?;
            match (username, password) {
                (Some(username), Some(password)) => {
                    let username = username.expose().to_string();
                    credentials
                        .insert(host.clone(), RegistryCredential::Fixed(Credential::Basic { username, password }));
                }
                (None, None) => {}
                _ => return Err(format!("registries.\"{host}\": set both a username and a password, or neither")),
            }
            if registry.ecr {
                #[cfg(feature = "aws")]
                credentials.insert(
                    host.clone(),
                    RegistryCredential::Ecr(Arc::new(crate::registry::ecr::EcrCredentials::new(host))),
                );
                #[cfg(not(feature = "aws"))]
                return Err(format!("registries.\"{host}\".ecr: this build of Ferry has no `aws` feature"));
            }
        }
        let http = HttpClients::new(&client).map_err(|e| e.to_string())?;
        Ok(RegistrySettings { client, credentials, http })
    }

    /// The credential for `registry` now (renewed when it is about to expire).
    pub async fn credential(&self, registry: &str) -> Result<Option<Credential>, WorkError> {
        match self.credentials.get(registry) {
            Some(credential) => credential.current().await.map(Some),
            None => Ok(None),
        }
    }

    async fn access(&self, source: &RepoName, target: &RepoName) -> Result<Access, WorkError> {
        Ok(Access {
            client: self.client.clone(),
            source_credential: self.credential(&source.registry).await?,
            target_credential: self.credential(&target.registry).await?,
            docker_config: Default::default(),
        })
    }

    async fn client(&self, registry: &str) -> Result<Arc<RegistryClient>, WorkError> {
        Ok(RegistryClient::new(
            self.http.for_registry(api_host(registry)),
            api_host(registry),
            &self.client,
            self.credential(registry).await?,
        )?)
    }
}

fn api_host(registry: &str) -> &str {
    if registry == crate::registry::reference::DOCKER_HUB { "registry-1.docker.io" } else { registry }
}

fn registry_ref(repo: &RepoName, image: ImageRef) -> RegistryRef {
    RegistryRef { registry: repo.registry.clone(), repository: repo.repository.clone(), image }
}

/// The one ARM client (and token cache) of every Azure notifier, made when the first needs it.
fn shared_arm(arm: &mut Option<Arc<ArmClient>>, config: &Config) -> Result<Arc<ArmClient>, String> {
    if let Some(arm) = arm {
        return Ok(arm.clone());
    }
    let made = Arc::new(crate::deploy::azure::arm_client(config).map_err(|e| e.to_string())?);
    *arm = Some(made.clone());
    Ok(made)
}

/// What became of a copy and its notification.
enum Delivered {
    /// Copied, and the runtime took it (or there is no runtime to tell).
    Deployed,
    /// Copied, but the runtime reported the deployment failed (its code and message).
    DeployFailed(String),
}

/// Where a gate left a promotion.
enum GateResult {
    Pass,
    /// Parked in this state, for this reason; the gate may open by itself at `wake_at_ms`
    /// (a soak's end, an approval's expiry), when the worker looks again.
    Wait(PromotionState, String, Option<i64>),
    Reject(String),
}

pub struct Worker {
    config: Arc<Config>,
    queue: Arc<dyn JobQueue>,
    ledger: Arc<dyn Ledger>,
    registries: RegistrySettings,
    notifiers: HashMap<(String, String), Arc<dyn Notifier>>,
    /// When to look at a parked promotion again (unix ms, promotion id), earliest first; the
    /// loop in [`Worker::run`] wakes them on time, the sweep catches what a restart forgot.
    timers: std::sync::Mutex<BinaryHeap<Reverse<(i64, String)>>>,
    timer_added: tokio::sync::Notify,
    /// One turn per (pipeline, stage); see [`Worker::stage_turn`].
    stage_turns: std::sync::Mutex<HashMap<(String, String), StageTurn>>,
}

/// Held while a promotion or rollback of one stage runs (see [`Worker::stage_turn`]).
type StageTurn = Arc<tokio::sync::Mutex<()>>;

impl Worker {
    pub fn new(config: Arc<Config>, queue: Arc<dyn JobQueue>, ledger: Arc<dyn Ledger>) -> Result<Self, String> {
        let registries = RegistrySettings::from_config(&config)?;
        let mut notifiers: HashMap<(String, String), Arc<dyn Notifier>> = HashMap::new();
        // One ARM client (and token cache) for every App Service stage, made only when needed.
        let mut arm: Option<Arc<ArmClient>> = None;
        for pipeline in &config.pipelines {
            for stage in &pipeline.stages {
                let notifier: Arc<dyn Notifier> = match &stage.notify {
                    None => Arc::new(NoopNotifier),
                    Some(Notify::Webhook { url, secret_env, secret_arn }) => {
                        let key = format!(
                            "pipelines.{}.stages.{}.notify.secret",
                            pipeline.name.get_ref(),
                            stage.name.get_ref()
                        );
                        let secret =
                            config.secret(&key, secret_env.as_ref(), secret_arn.as_ref()).map_err(|e| e.to_string())?;
                        Arc::new(WebhookNotifier::new(url, secret).map_err(|e| e.to_string())?)
                    }
                    Some(Notify::AppService { subscription, resource_group, app, slot, swap }) => {
                        let arm = shared_arm(&mut arm, &config)?;
                        Arc::new(
                            AppServiceNotifier::new(arm, subscription, resource_group, app, slot.as_deref(), *swap)
                                .map_err(|e| e.to_string())?,
                        )
                    }
                    Some(Notify::Kubernetes {
                        kubeconfig,
                        aks,
                        context,
                        namespace,
                        deployment,
                        container,
                        timeout_secs,
                    }) => {
                        let timeout = Duration::from_secs(timeout_secs.unwrap_or(300));
                        let notifier = match (kubeconfig, aks) {
                            (None, Some(aks)) => {
                                let cluster = AksCluster {
                                    arm: shared_arm(&mut arm, &config)?,
                                    subscription: aks.subscription.clone(),
                                    resource_group: aks.resource_group.clone(),
                                    cluster: aks.cluster.clone(),
                                    context: context.clone(),
                                };
                                KubernetesNotifier::for_aks(cluster, namespace, deployment, container, timeout)
                            }
                            (kubeconfig, _) => {
                                let api = match kubeconfig {
                                    Some(path) => ApiServer::from_kubeconfig(path, context.as_deref()),
                                    None => ApiServer::in_cluster(),
                                }
                                .map_err(|e| format!("stage {}: {e}", stage.name.get_ref()))?;
                                KubernetesNotifier::new(api, namespace, deployment, container, timeout)
                            }
                        };
                        Arc::new(notifier.map_err(|e| e.to_string())?)
                    }
                };
                notifiers.insert((pipeline.name.get_ref().clone(), stage.name.get_ref().clone()), notifier);
            }
        }
        Ok(Worker {
            config,
            queue,
            ledger,
            registries,
            notifiers,
            timers: std::sync::Mutex::new(BinaryHeap::new()),
            timer_added: tokio::sync::Notify::new(),
            stage_turns: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    pub fn queue(&self) -> &Arc<dyn JobQueue> {
        &self.queue
    }

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
    fn wake_at(&self, at_ms: i64, id: &str) {
        self.timers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Reverse((at_ms, id.to_string())));
        self.timer_added.notify_one();
    }

    /// How long until the earliest timer is due.
    fn next_timer(&self) -> Option<Duration> {
        let timers = self.timers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Reverse((at_ms, _)) = timers.peek()?;
        Some(Duration::from_millis((at_ms - now_ms()).max(0) as u64))
    }

    /// Wakes every parked promotion whose timer is due.
    async fn fire_timers(&self) {
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

    /// Processes one delivery and settles it with the queue.
    pub async fn handle(&self, delivery: Delivery) -> Handled {
        let job: QueuedJob = match serde_json::from_value(delivery.payload.clone()) {
            Ok(job) => job,
            Err(e) => {
                let error = WorkError::permanent(format!("unreadable job payload: {e}"));
                let span = tracing::error_span!("job", job.id = %delivery.id);
                return self.settle(delivery, Outcome::Failed { error, promotion: None }).instrument(span).await;
            }
        };
        let (pipeline, stage) = job.pipeline_and_stage();
        let span = tracing::info_span!("job", job.id = %delivery.id, pipeline, stage, attempt = delivery.receive_count);
        // Renew the lease while working, so a long copy is not delivered to a second worker;
        // if this process dies, renewals stop and the job comes back after one timeout.
        let lease = Duration::from_secs(self.config.worker.visibility_secs.max(1));
        let heartbeat = {
            let queue = self.queue.clone();
            let receipt = delivery.receipt.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(lease / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = queue.extend(&receipt, lease).await {
                        tracing::warn!(error = %e, "could not renew the job's lease");
                        break;
                    }
                }
            })
        };
        let outcome = self.process(&job, &delivery.id, delivery.receive_count).instrument(span.clone()).await;
        heartbeat.abort();
        self.settle(delivery, outcome).instrument(span).await
    }

    /// Applies [`settlement`] to a finished delivery: ack, nack with backoff, or dead-letter.
    async fn settle(&self, delivery: Delivery, outcome: Outcome) -> Handled {
        let settings = RetrySettings::from_config(&self.config.worker);
        let decided = settlement(&outcome, delivery.receive_count, settings);
        let settled = match &outcome {
            Outcome::Done(what) => {
                tracing::info!("{what}");
                self.queue.ack(&delivery.receipt).await
            }
            Outcome::Parked(why) => {
                tracing::info!("parked: {why}");
                self.queue.ack(&delivery.receipt).await
            }
            Outcome::Failed { error, promotion } => match decided {
                Settlement::Retry { after } => {
                    tracing::warn!(%error, class = %error.class, ?after, "attempt failed; will retry");
                    self.queue.nack(&delivery.receipt, &error.message, after).await
                }
                _ => {
                    let reason = dead_letter_reason(error, delivery.receive_count);
                    tracing::error!(%error, class = %error.class, "{reason}: job moved to the dead-letter store");
                    if let Some(id) = promotion {
                        self.mark_dead_lettered(id, &error.message).await;
                    }
                    self.queue.dead_letter(&delivery.receipt, &format!("{reason}: {error}")).await
                }
            },
        };
        if let Err(e) = &settled {
            // Typically the lease ran out (the process stalled): the queue redelivers the job,
            // or dead-letters it if it has been delivered too often.
            tracing::warn!(error = %e, "could not settle the job");
        }
        Handled { settlement: decided, settled: settled.is_ok() }
    }

    /// The one core every shell calls: `job_id` is the queue's id of the job (an SQS message id
    /// on AWS), `attempt` its receive count.
    pub async fn process(&self, job: &QueuedJob, job_id: &str, attempt: u32) -> Outcome {
        match job {
            QueuedJob::Promote(job) => {
                self.record_job(JobRecord {
                    id: job_id.to_string(),
                    state: JobState::Running,
                    promotion: job.promotion.clone(),
                    detail: None,
                    error: None,
                    updated_at_ms: now_ms(),
                })
                .await;
                let mut promotion = None;
                let turn = self.stage_turn(&job.pipeline, &job.stage).await;
                let result = self.promote(job, job_id, attempt, &mut promotion).await;
                drop(turn);
                let outcome = result.unwrap_or_else(|error| Outcome::Failed { error, promotion: promotion.clone() });
                let record = self.job_record(job_id, attempt, &outcome, promotion).await;
                self.record_job(record).await;
                outcome
            }
            QueuedJob::Deployment(job) => {
                self.deployment_reported(job).await.unwrap_or_else(|error| Outcome::Failed { error, promotion: None })
            }
        }
    }

    /// Waits until no other promotion or rollback of `pipeline`'s `stage` runs in this process.
    /// Each one moves the stage's tag, reads it back and records the stage's current digest:
    /// two at once read each other's tag (a digest mismatch, retried until dead-lettered) and
    /// could leave the ledger naming one digest while the tag names another, and two jobs of
    /// one promotion could both copy it. The Lambda worker gets the same from its SQS FIFO
    /// group (`pipeline/stage`); a lease is renewed while its job waits here.
    async fn stage_turn(&self, pipeline: &str, stage: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut turns = self.stage_turns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            turns.entry((pipeline.to_string(), stage.to_string())).or_default().clone()
        };
        turn.lock_owned().await
    }

    /// What `outcome` means to the person who asked for the job (see [`JobState`]).
    async fn job_record(&self, job_id: &str, attempt: u32, outcome: &Outcome, promotion: Option<String>) -> JobRecord {
        let mut record = JobRecord {
            id: job_id.to_string(),
            state: JobState::Running,
            promotion,
            detail: None,
            error: None,
            updated_at_ms: now_ms(),
        };
        match outcome {
            Outcome::Done(what) => {
                let promoted = match &record.promotion {
                    Some(id) => self.ledger.promotion(id).await.ok().flatten(),
                    None => None,
                };
                record.detail = Some(what.clone());
                record.state = match promoted.as_ref().map(|p| p.state) {
                    Some(PromotionState::Succeeded) => JobState::Promoted,
                    Some(PromotionState::DeployFailed) => {
                        record.error = promoted.and_then(|p| p.error);
                        JobState::Failed
                    }
                    _ => JobState::Refused,
                };
            }
            Outcome::Parked(why) => {
                record.state = JobState::Parked;
                record.detail = Some(why.clone());
            }
            Outcome::Failed { error, .. } => {
                let settings = RetrySettings::from_config(&self.config.worker);
                record.state = match settlement(outcome, attempt, settings) {
                    Settlement::Retry { .. } => {
                        record.error = Some(format!("attempt {attempt} failed, will retry: {error}"));
                        JobState::Running
                    }
                    _ if error.class == crate::error::ErrorClass::NotFound => {
                        record.error = Some(error.to_string());
                        JobState::Refused
                    }
                    _ => {
                        record.error = Some(format!("{}: {error}", dead_letter_reason(error, attempt)));
                        JobState::Failed
                    }
                };
            }
        }
        record
    }

    /// Best effort: the job's outcome is for the person waiting on it; the work itself is done.
    async fn record_job(&self, record: JobRecord) {
        if let Err(e) = self.ledger.put_job(record).await {
            tracing::warn!(error = %e, "could not record the job's outcome for `ferry promote --wait`");
        }
    }

    async fn promote(
        &self,
        job: &PromotionJob,
        job_id: &str,
        attempt: u32,
        promotion: &mut Option<String>,
    ) -> Result<Outcome, WorkError> {
        let pipeline = self
            .config
            .pipeline(&job.pipeline)
            .ok_or_else(|| WorkError::permanent(format!("pipeline `{}` is not configured (any more)", job.pipeline)))?;
        let (index, stage) = pipeline
            .stage(&job.stage)
            .ok_or_else(|| WorkError::permanent(format!("pipeline `{}` has no stage `{}`", job.pipeline, job.stage)))?;
        // The source is what the configuration says, never what a payload says.
        let source = pipeline.stage_source(index);
        if job.source != source.to_string() {
            return Err(WorkError::permanent(format!(
                "job names source {} but stage `{}` promotes from {source}",
                job.source, job.stage
            )));
        }
        let target = stage.target_repo();

        let (digest, tag_moved_to) = self.resolve(&source, &job.request).await?;
        let mut id = job.promotion.clone().unwrap_or_else(|| promotion_of(job, &digest));
        *promotion = Some(id.clone());
        let now = now_ms();
        let mut existing = self.ledger.promotion(&id).await?;
        if let Some(record) = existing.as_ref().filter(|r| r.state.is_final() && job.promotion.is_none()) {
            if record.state == PromotionState::Succeeded {
                let current = self.ledger.environment(&job.pipeline, &job.stage).await?;
                if current.is_some_and(|env| env.current.digest == record.digest) {
                    // Redelivered, or a duplicate: make sure the next stage was queued, nothing else.
                    self.queue_next_stage(pipeline, index, record).await?;
                    return Ok(Outcome::Done(format!("{id}: {digest} is already in {}", job.stage)));
                }
            }
            if record.state == PromotionState::Rejected {
                return Ok(Outcome::Done(format!("{id}: rejected earlier, not promoting")));
            }
            if record.state == PromotionState::DeployFailed && job.trigger.as_deref() != Some("manual") {
                return Ok(Outcome::Done(format!(
                    "{id}: its deployment failed earlier; try again with `ferry promote`"
                )));
            }
            // It ran here once and was rolled back from. Only a person brings it back; an old
            // webhook redelivered must not undo a rollback.
            if job.trigger.as_deref() != Some("manual") {
                return Ok(Outcome::Done(format!(
                    "{id}: {digest} was rolled back from in {}; bring it back with `ferry promote` or `ferry rollback --to`",
                    job.stage
                )));
            }
            // A person asking again starts a new promotion: its own record, the stage's gate
            // again, and the old record left as history. Its id derives from the job's, so a
            // redelivery of this job lands on the same new record.
            id = promotion_id(&job.pipeline, &job.stage, &format!("{id}@{job_id}"));
            *promotion = Some(id.clone());
            existing = self.ledger.promotion(&id).await?;
        }
        let mut record = match existing {
            Some(record) if record.state == PromotionState::Rejected => {
                return Ok(Outcome::Done(format!("{id}: rejected, not promoting")));
            }
            Some(record) if record.state == PromotionState::Succeeded => {
                self.queue_next_stage(pipeline, index, &record).await?;
                return Ok(Outcome::Done(format!("{id}: already promoted {digest} to {}", job.stage)));
            }
            Some(record) => record,
            None => PromotionRecord {
                id: id.clone(),
                pipeline: job.pipeline.clone(),
                stage: job.stage.clone(),
                source: source.to_string(),
                target: target.to_string(),
                digest: digest.to_string(),
                tag: job.request.tag.clone(),
                tag_moved_to: tag_moved_to.as_ref().map(Digest::to_string),
                build_id: job.request.build.as_ref().and_then(|b| b.id.clone()),
                build_number: job.request.build.as_ref().and_then(|b| b.number.clone()),
                trigger: job.trigger.clone().unwrap_or_else(|| format!("webhook:{}", job.request.sender.as_str())),
                triggered_by: job.triggered_by.clone(),
                state: PromotionState::Pending,
                gates: Vec::new(),
                approvals: Vec::new(),
                error: None,
                attempts: 0,
                created_at_ms: now,
                updated_at_ms: now,
                finished_at_ms: None,
                // From its creation, so the id `ferry promote` printed leads here.
                job_id: Some(job_id.to_string()),
            },
        };
        if let Some(moved) = &tag_moved_to {
            tracing::warn!(tag = ?job.request.tag, event_digest = %digest, now_points_to = %moved, "the tag moved since the event; promoting the event's digest");
        }

        match self.evaluate_gate(pipeline, index, stage, &mut record).await? {
            GateResult::Pass => {}
            GateResult::Wait(state, why, wake_at_ms) => {
                if let Some(at_ms) = wake_at_ms {
                    self.wake_at(at_ms, &id);
                }
                record.state = state;
                record.updated_at_ms = now_ms();
                self.ledger.put_promotion(record).await?;
                return Ok(Outcome::Parked(format!("{id}: {why}")));
            }
            GateResult::Reject(why) => {
                record.state = PromotionState::Rejected;
                record.error = Some(why.clone());
                record.finished_at_ms = Some(now_ms());
                record.updated_at_ms = now_ms();
                self.ledger.put_promotion(record).await?;
                return Ok(Outcome::Done(format!("{id}: {why}")));
            }
        }

        record.state = PromotionState::Running;
        record.attempts = attempt;
        record.job_id = Some(job_id.to_string());
        record.updated_at_ms = now_ms();
        self.ledger.put_promotion(record.clone()).await?;

        match self.deliver(pipeline, stage, &source, &target, &digest, &record, false).await {
            Ok(Delivered::Deployed) => {}
            Ok(Delivered::DeployFailed(why)) => return self.deploy_failed(stage, record, why).await,
            Err(error) => {
                record.state = PromotionState::Failed;
                record.error = Some(error.message.clone());
                record.updated_at_ms = now_ms();
                let _ = self.ledger.put_promotion(record).await;
                return Err(error);
            }
        }

        record.state = PromotionState::Succeeded;
        record.error = None;
        record.finished_at_ms = Some(now_ms());
        record.updated_at_ms = now_ms();
        self.ledger.put_promotion(record.clone()).await?;
        self.queue_next_stage(pipeline, index, &record).await?;
        Ok(Outcome::Done(format!("{id}: promoted {digest} to {target} ({})", job.stage)))
    }

    /// The stage's runtime said the deployment failed: the promotion is `deploy_failed` (final,
    /// not retried) and, with `rollback_on_failure`, the stage goes back to the digest it ran.
    async fn deploy_failed(
        &self,
        stage: &Stage,
        mut record: PromotionRecord,
        why: String,
    ) -> Result<Outcome, WorkError> {
        tracing::error!(promotion = %record.id, "deploy_failed: {why}");
        record.state = PromotionState::DeployFailed;
        record.error = Some(why.clone());
        record.finished_at_ms = Some(now_ms());
        record.updated_at_ms = now_ms();
        self.ledger.put_promotion(record.clone()).await?;
        if !stage.rollback_on_failure {
            return Ok(Outcome::Done(format!("{}: deploy_failed: {why}", record.id)));
        }
        // The failed digest was never recorded as running, so the current entry is the last good one.
        let Some(good) = self.ledger.environment(&record.pipeline, &record.stage).await?.map(|e| e.current) else {
            return Ok(Outcome::Done(format!(
                "{}: deploy_failed: {why}; nothing ran here before to roll back to",
                record.id
            )));
        };
        let digest: Digest = good
            .digest
            .parse()
            .map_err(|e| WorkError::permanent(format!("the ledger holds an invalid digest: {e}")))?;
        match self.rollback_in_turn(&record.pipeline, &record.stage, Some(&digest), Some("rollback_on_failure")).await {
            Ok(rollback) => Ok(Outcome::Done(format!(
                "{}: deploy_failed: {why}; rolled back to {digest} ({})",
                record.id, rollback.id
            ))),
            Err(e) => Ok(Outcome::Done(format!("{}: deploy_failed: {why}; the rollback failed too: {e}", record.id))),
        }
    }

    /// Copies `digest` from `source` to `target` with the stage's tags, verifies, notifies the
    /// stage and records what it now runs.
    #[allow(clippy::too_many_arguments)]
    async fn deliver(
        &self,
        pipeline: &Pipeline,
        stage: &Stage,
        source: &RepoName,
        target: &RepoName,
        digest: &Digest,
        record: &PromotionRecord,
        rollback: bool,
    ) -> Result<Delivered, WorkError> {
        let tags = target_tags(stage, record);
        let (first, rest) = match tags.split_first() {
            Some((first, rest)) => (Some(first.clone()), rest.to_vec()),
            None => (None, Vec::new()),
        };
        let from = Location::Registry(registry_ref(source, ImageRef { tag: None, digest: Some(digest.clone()) }));
        let to = Location::Registry(registry_ref(target, ImageRef { tag: first, digest: None }));
        let options = CopyOptions { extra_tags: rest, ..CopyOptions::default() };
        let access = self.registries.access(source, target).await?;
        let report = copy(&from, &to, &access, &options, Arc::new(Progress::default()))
            .await
            .map_err(|e| WorkError::from(e).context(format_args!("copy {from} → {to}")))?;
        if report.digest != digest.as_str() {
            return Err(WorkError::transient(format!("copy produced {} instead of {digest}", report.digest)));
        }
        tracing::info!(
            digest = %digest, bytes = report.bytes_transferred, copied = report.blobs_copied,
            mounted = report.blobs_mounted, skipped = report.blobs_skipped, "copied to {target}"
        );

        let deployment = Deployment {
            pipeline: pipeline.name.get_ref().clone(),
            stage: stage.name.get_ref().clone(),
            image: format!("{target}@{digest}"),
            digest: digest.to_string(),
            tag: record.tag.clone(),
            build_number: record.build_number.clone(),
            promotion_id: record.id.clone(),
            rollback,
        };
        let notifier = self
            .notifiers
            .get(&(deployment.pipeline.clone(), deployment.stage.clone()))
            .cloned()
            .unwrap_or_else(|| Arc::new(NoopNotifier));
        let notified = match notifier.notify(&deployment).await {
            Ok(notified) => notified,
            Err(e @ NotifyError::Transient { .. }) => {
                return Err(WorkError::transient(format!("deploy notification failed: {e}")));
            }
            Err(e @ NotifyError::Permanent { .. }) => {
                self.ledger
                    .record_deployment(DeploymentRecord {
                        pipeline: deployment.pipeline.clone(),
                        stage: deployment.stage.clone(),
                        status: "failed".into(),
                        digest: Some(digest.to_string()),
                        reporter: "notifier".into(),
                        detail: Some(e.to_string()),
                        at_ms: now_ms(),
                    })
                    .await?;
                return Ok(Delivered::DeployFailed(e.to_string()));
            }
        };
        if notified.confirmed {
            self.ledger
                .record_deployment(DeploymentRecord {
                    pipeline: deployment.pipeline.clone(),
                    stage: deployment.stage.clone(),
                    status: "succeeded".into(),
                    digest: Some(digest.to_string()),
                    reporter: "notifier".into(),
                    detail: Some(notified.detail.clone()),
                    at_ms: now_ms(),
                })
                .await?;
        }
        self.ledger
            .set_current(
                &deployment.pipeline,
                &deployment.stage,
                EnvironmentEntry {
                    digest: digest.to_string(),
                    tag: record.tag.clone(),
                    build_number: record.build_number.clone(),
                    promotion_id: record.id.clone(),
                    since_ms: now_ms(),
                },
            )
            .await?;
        Ok(Delivered::Deployed)
    }

    /// The digest to promote: the event's, checked to exist at the source, or the tag's as the
    /// source resolves it now. Also returns where the tag points now when it moved.
    async fn resolve(
        &self,
        source: &RepoName,
        request: &PromotionRequest,
    ) -> Result<(Digest, Option<Digest>), WorkError> {
        let client = self.registries.client(&source.registry).await?;
        let scope = vec![pull_scope(&source.repository)];
        let by_tag = match &request.tag {
            Some(tag) => client.head_manifest(&source.repository, tag, &scope).await?,
            None => None,
        };
        match (&request.digest, by_tag) {
            (Some(digest), tag_now) => {
                let exists = client.head_manifest(&source.repository, digest.as_str(), &scope).await?.is_some();
                if !exists {
                    return Err(WorkError::not_found(format!("{digest} is not in {source}")));
                }
                let moved = tag_now.filter(|now| now != digest);
                Ok((digest.clone(), moved))
            }
            (None, Some(digest)) => Ok((digest, None)),
            (None, None) => Err(WorkError::not_found(match &request.tag {
                Some(tag) => format!("{source}:{tag} does not exist"),
                None => format!("the request names neither a tag nor a digest of {source}"),
            })),
        }
    }

    async fn evaluate_gate(
        &self,
        pipeline: &Pipeline,
        index: usize,
        stage: &Stage,
        record: &mut PromotionRecord,
    ) -> Result<GateResult, WorkError> {
        let now = now_ms();
        if !stage.tags.is_empty() || stage.semver {
            let tag = record.tag.clone().unwrap_or_default();
            let pattern_ok = stage.tags.is_empty() || stage.tags.iter().any(|p| tag_matches(p, &tag));
            let semver_ok = !stage.semver || is_release_semver(&tag);
            if !(pattern_ok && semver_ok) {
                let why = format!(
                    "tag `{tag}` is not allowed into {} (tags {:?}, semver {})",
                    stage.name.get_ref(),
                    stage.tags,
                    stage.semver
                );
                decide(record, "tags", "reject", why.clone());
                return Ok(GateResult::Reject(why));
            }
            decide(record, "tags", "pass", format!("tag `{tag}` allowed"));
        }
        let previous = index.checked_sub(1).map(|i| pipeline.stages[i].name.get_ref().clone());
        match stage.gate {
            Gate::Auto => {
                decide(record, "auto", "pass", "automatic".into());
                Ok(GateResult::Pass)
            }
            Gate::Approval => {
                let valid = counted_approvers(stage, record);
                let have = valid.len() as u32;
                if have >= stage.approvers {
                    let detail = format!("approved by {}", valid.join(", "));
                    decide(record, "approval", "pass", detail);
                    return Ok(GateResult::Pass);
                }
                if let Some(expiry) = stage.approval_expiry() {
                    if now - record.created_at_ms > expiry.as_millis() as i64 {
                        let why = format!("not approved within {} h", expiry.as_secs() / 3600);
                        decide(record, "approval", "reject", why.clone());
                        return Ok(GateResult::Reject(why));
                    }
                }
                let why = format!("waiting for approval ({have} of {}): ferry approve {}", stage.approvers, record.id);
                decide(record, "approval", "wait", why.clone());
                let expires_at = stage.approval_expiry().map(|e| record.created_at_ms + e.as_millis() as i64 + 1);
                Ok(GateResult::Wait(PromotionState::AwaitingApproval, why, expires_at))
            }
            Gate::After | Gate::Soak => {
                let previous = previous.expect("validated: after/soak need a previous stage");
                let env = self.ledger.environment(&pipeline.name.get_ref().clone(), &previous).await?;
                let Some(env) = env.filter(|e| e.current.digest == record.digest) else {
                    let why = format!("{} is not running {} (yet)", previous, record.digest);
                    let gate = if stage.gate == Gate::After { "after" } else { "soak" };
                    decide(record, gate, "wait", why.clone());
                    return Ok(GateResult::Wait(PromotionState::AwaitingGate, why, None));
                };
                if stage.gate == Gate::After {
                    let reports = self.ledger.deployments(pipeline.name.get_ref(), &previous, 20).await?;
                    let deployed = reports.iter().any(|r| {
                        r.status.eq_ignore_ascii_case("succeeded")
                            && r.at_ms >= env.current.since_ms - 1_000
                            && r.digest.as_deref().is_none_or(|d| d == record.digest)
                    });
                    if deployed {
                        decide(record, "after", "pass", format!("{previous} reported deployed"));
                        return Ok(GateResult::Pass);
                    }
                    let why = format!("waiting for {previous} to report deployed");
                    decide(record, "after", "wait", why.clone());
                    return Ok(GateResult::Wait(PromotionState::AwaitingGate, why, None));
                }
                let soaked_ms = now - env.current.since_ms;
                let needed_ms = stage.soak().as_millis() as i64;
                if soaked_ms >= needed_ms {
                    decide(record, "soak", "pass", format!("ran {} s in {previous}", soaked_ms / 1000));
                    return Ok(GateResult::Pass);
                }
                let why = format!("soaking in {previous}: {} s to go", (needed_ms - soaked_ms + 999) / 1000);
                decide(record, "soak", "wait", why.clone());
                Ok(GateResult::Wait(PromotionState::AwaitingGate, why, Some(env.current.since_ms + needed_ms)))
            }
        }
    }

    /// Queues the promotion of a just-promoted digest into the next stage, if there is one.
    async fn queue_next_stage(
        &self,
        pipeline: &Pipeline,
        index: usize,
        record: &PromotionRecord,
    ) -> Result<(), WorkError> {
        if index + 1 >= pipeline.stages.len() {
            return Ok(());
        }
        let job = self.job_for(pipeline, index + 1, record, format!("previous-stage:{}", record.stage), None);
        self.queue.enqueue(vec![job.to_new_job()]).await?;
        Ok(())
    }

    /// A promotion job carrying `record`'s digest, tag and build into stage `index`.
    fn job_for(
        &self,
        pipeline: &Pipeline,
        index: usize,
        record: &PromotionRecord,
        trigger: String,
        by: Option<String>,
    ) -> PromotionJob {
        let build = (record.build_id.is_some() || record.build_number.is_some())
            .then(|| Build { id: record.build_id.clone(), number: record.build_number.clone() });
        let source = pipeline.stage_source(index);
        let mut job = PromotionJob::new(
            pipeline.name.get_ref(),
            pipeline.stages[index].name.get_ref(),
            &source.to_string(),
            PromotionRequest {
                sender: Sender::Operator,
                registry: Some(source.registry.clone()),
                repository: source.repository.clone(),
                tag: record.tag.clone(),
                digest: record.digest.parse().ok(),
                build,
                delivery_id: None,
            },
        );
        job.trigger = Some(trigger);
        job.triggered_by = by.or_else(|| record.triggered_by.clone());
        job
    }

    /// Re-queues a parked promotion so its gate is evaluated again.
    pub async fn wake(&self, record: &PromotionRecord, why: &str) -> Result<String, WorkError> {
        let gone = || WorkError::permanent(format!("{}/{} is no longer configured", record.pipeline, record.stage));
        let pipeline = self.config.pipeline(&record.pipeline).ok_or_else(gone)?;
        let (index, _) = pipeline.stage(&record.stage).ok_or_else(gone)?;
        let mut job = self.job_for(pipeline, index, record, why.to_string(), None);
        job.trigger = Some(record.trigger.clone());
        job.promotion = Some(record.id.clone());
        // Never collapse into the job that parked it.
        let key = format!("wake/{}/{}/{}", record.id, record.approvals.len(), now_ms());
        let enqueued = self.queue.enqueue(vec![job.to_new_job_keyed(key)]).await?;
        Ok(enqueued[0].id.clone())
    }

    async fn deployment_reported(&self, job: &DeploymentJob) -> Result<Outcome, WorkError> {
        let current = self.ledger.environment(&job.pipeline, &job.stage).await?;
        // A report naming a build concerns the digest that build produced in this stage; one
        // that cannot be tied to a digest here opens nothing, so it is not recorded.
        let digest = match &job.build_number {
            None => None,
            Some(build) => {
                let history = self.ledger.history(&job.pipeline, Some(&job.stage), 200).await?;
                let produced = history.into_iter().find(|r| {
                    r.build_number.as_deref() == Some(build.as_str()) && r.state == PromotionState::Succeeded
                });
                let Some(produced) = produced else {
                    let why = format!(
                        "{} {}: deployment report about build {} ignored: no promotion of that build in this stage",
                        job.pipeline,
                        job.stage,
                        crate::escape::escape_control(build)
                    );
                    tracing::warn!("{why}");
                    return Ok(Outcome::Done(why));
                };
                Some(produced.digest)
            }
        };
        self.ledger
            .record_deployment(DeploymentRecord {
                pipeline: job.pipeline.clone(),
                stage: job.stage.clone(),
                status: job.report.status.clone(),
                digest: digest.clone(),
                reporter: "azure-devops".into(),
                detail: job.report.release.clone(),
                at_ms: now_ms(),
            })
            .await?;
        if job.report.status.eq_ignore_ascii_case("succeeded") {
            // A later stage waiting for this one to be deployed may go now.
            for record in self.ledger.parked(Some(&job.pipeline)).await? {
                let waits_on_this = record.state == PromotionState::AwaitingGate
                    && current.as_ref().is_some_and(|c| c.current.digest == record.digest)
                    && digest.as_ref().is_none_or(|d| *d == record.digest);
                if waits_on_this {
                    self.wake(&record, "gate-passed").await?;
                }
            }
        }
        Ok(Outcome::Done(format!("{} {} reported {}", job.pipeline, job.stage, job.report.status)))
    }

    /// Wakes parked promotions whose gate may have opened with time (soak) or expired (approval).
    pub async fn sweep(&self) -> Result<(), WorkError> {
        self.reconcile_dead_letters().await?;
        let now = now_ms();
        for record in self.ledger.parked(None).await? {
            let Some(pipeline) = self.config.pipeline(&record.pipeline) else { continue };
            let Some((_, stage)) = pipeline.stage(&record.stage) else { continue };
            let due = match stage.gate {
                Gate::Soak => true,
                Gate::Approval => {
                    stage.approval_expiry().is_some_and(|e| now - record.created_at_ms > e.as_millis() as i64)
                }
                _ => false,
            };
            if due {
                self.wake(&record, "sweep").await?;
            }
        }
        Ok(())
    }

    async fn mark_dead_lettered(&self, id: &str, error: &str) {
        if let Ok(Some(mut record)) = self.ledger.promotion(id).await {
            if record.state.is_final() {
                return;
            }
            record.state = PromotionState::DeadLettered;
            record.error = Some(error.to_string());
            record.updated_at_ms = now_ms();
            let _ = self.ledger.put_promotion(record).await;
        }
    }

    /// Marks promotions whose job the queue dead-lettered on its own (a worker that kept
    /// dying on it, or SQS's redrive policy), so the ledger never says `running` forever.
    async fn reconcile_dead_letters(&self) -> Result<(), WorkError> {
        for letter in self.queue.dead_letters().await? {
            let Ok(QueuedJob::Promote(job)) = serde_json::from_value::<QueuedJob>(letter.payload.clone()) else {
                continue;
            };
            let history = self.ledger.history(&job.pipeline, Some(&job.stage), 50).await?;
            for record in history {
                let stuck = !record.state.is_final() && record.state != PromotionState::DeadLettered;
                if stuck && record.job_id.as_deref() == Some(letter.id.as_str()) {
                    self.mark_dead_lettered(&record.id, &letter.last_error).await;
                }
            }
        }
        Ok(())
    }

    /// Re-points `stage` to an earlier digest already in its target repository, tags it, and
    /// notifies. Returns the record of the rollback.
    pub async fn rollback(
        &self,
        pipeline_name: &str,
        stage_name: &str,
        to: Option<&Digest>,
        by: Option<&str>,
    ) -> Result<PromotionRecord, WorkError> {
        let _turn = self.stage_turn(pipeline_name, stage_name).await;
        self.rollback_in_turn(pipeline_name, stage_name, to, by).await
    }

    /// [`Worker::rollback`] for a caller that holds the stage's turn already (a promotion whose
    /// deployment failed rolls back within its own turn).
    async fn rollback_in_turn(
        &self,
        pipeline_name: &str,
        stage_name: &str,
        to: Option<&Digest>,
        by: Option<&str>,
    ) -> Result<PromotionRecord, WorkError> {
        let (pipeline, _, stage) = self.stage_of(pipeline_name, stage_name)?;
        let history = self.ledger.environment_history(pipeline_name, stage_name, 100).await?;
        let current = history
            .first()
            .ok_or_else(|| WorkError::conflict(format!("{pipeline_name}/{stage_name} has never been promoted to")))?;
        let entry =
            match to {
                Some(digest) => history.iter().find(|e| e.digest == digest.as_str()).cloned().ok_or_else(|| {
                    WorkError::not_found(format!("{digest} never ran in {pipeline_name}/{stage_name}"))
                })?,
                None => previous_good(&history).cloned().ok_or_else(|| {
                    WorkError::conflict(format!("{pipeline_name}/{stage_name} has no earlier digest to roll back to"))
                })?,
            };
        let digest: Digest = entry
            .digest
            .parse()
            .map_err(|e| WorkError::permanent(format!("the ledger holds an invalid digest: {e}")))?;
        let target = stage.target_repo();
        let now = now_ms();
        let mut record = PromotionRecord {
            id: format!("r-{}", &promotion_id(pipeline_name, stage_name, &format!("{digest}@{now}"))[2..]),
            pipeline: pipeline_name.into(),
            stage: stage_name.into(),
            source: target.to_string(),
            target: target.to_string(),
            digest: digest.to_string(),
            tag: entry.tag.clone(),
            tag_moved_to: None,
            build_id: None,
            build_number: entry.build_number.clone(),
            trigger: "rollback".into(),
            triggered_by: by.map(str::to_string),
            state: PromotionState::Running,
            gates: vec![GateDecision {
                gate: "rollback".into(),
                decision: "pass".into(),
                detail: format!("from {} back to {digest}", current.digest),
                at_ms: now,
            }],
            approvals: Vec::new(),
            error: None,
            attempts: 1,
            created_at_ms: now,
            updated_at_ms: now,
            finished_at_ms: None,
            job_id: None,
        };
        self.ledger.put_promotion(record.clone()).await?;
        let delivered = self.deliver(pipeline, stage, &target, &target, &digest, &record, true).await;
        record.updated_at_ms = now_ms();
        record.finished_at_ms = Some(now_ms());
        match &delivered {
            Ok(Delivered::Deployed) => record.state = PromotionState::Succeeded,
            Ok(Delivered::DeployFailed(why)) => {
                record.state = PromotionState::DeployFailed;
                record.error = Some(why.clone());
            }
            Err(e) => {
                record.state = PromotionState::Failed;
                record.error = Some(e.message.clone());
            }
        }
        self.ledger.put_promotion(record.clone()).await?;
        match delivered {
            Err(e) => Err(e.context(format_args!("rollback of {pipeline_name}/{stage_name} to {digest} failed"))),
            Ok(Delivered::DeployFailed(why)) => Err(WorkError::permanent(format!(
                "rollback of {pipeline_name}/{stage_name} to {digest}: deploy_failed: {why}"
            ))),
            Ok(Delivered::Deployed) => Ok(record),
        }
    }

    /// A configured pipeline and stage (with its index), or a not-found error naming what is missing.
    fn stage_of(&self, pipeline_name: &str, stage_name: &str) -> Result<(&Pipeline, usize, &Stage), WorkError> {
        let pipeline = self
            .config
            .pipeline(pipeline_name)
            .ok_or_else(|| WorkError::not_found(format!("no pipeline `{pipeline_name}`")))?;
        let (index, stage) = pipeline
            .stage(stage_name)
            .ok_or_else(|| WorkError::not_found(format!("pipeline `{pipeline_name}` has no stage `{stage_name}`")))?;
        Ok((pipeline, index, stage))
    }

    /// Queues a manual promotion of `reference` (tag or digest, as found in the stage's source)
    /// into `stage`.
    pub async fn promote_manually(
        &self,
        pipeline_name: &str,
        reference: &str,
        stage_name: &str,
        by: Option<&str>,
    ) -> Result<String, WorkError> {
        let (pipeline, index, _) = self.stage_of(pipeline_name, stage_name)?;
        let source = pipeline.stage_source(index);
        let (tag, digest) = match reference.parse::<Digest>() {
            Ok(d) => (None, Some(d)),
            Err(_) => {
                reference
                    .parse::<Tag>()
                    .map_err(|e| WorkError::permanent(format!("`{reference}` is neither a digest nor a tag: {e}")))?;
                (Some(reference.to_string()), None)
            }
        };
        let mut job = PromotionJob::new(
            pipeline_name,
            stage_name,
            &source.to_string(),
            PromotionRequest {
                sender: Sender::Operator,
                registry: Some(source.registry.clone()),
                repository: source.repository.clone(),
                tag,
                digest,
                build: None,
                delivery_id: Some(format!("manual-{}", now_ms())),
            },
        );
        job.trigger = Some("manual".into());
        job.triggered_by = by.map(str::to_string);
        // Each manual request is its own job: a person asking again means it.
        let key = format!("manual/{pipeline_name}/{stage_name}/{reference}/{}", now_ms());
        let enqueued = self.queue.enqueue(vec![job.to_new_job_keyed(key)]).await?;
        Ok(enqueued[0].id.clone())
    }
}

/// Why a failed job goes to the dead letters, for the operator reading `ferry dlq list`.
fn dead_letter_reason(error: &WorkError, receive_count: u32) -> String {
    if error.is_transient() || error.class == crate::error::ErrorClass::Conflict {
        format!("gave up after {receive_count} attempts")
    } else {
        format!("{} error, not retried", error.class)
    }
}

/// The ledger record a job is about when it names none: one per pipeline, stage, digest and tag,
/// so duplicate jobs and redeliveries meet there, and a new tag on a known digest is a promotion
/// of its own (the tag is applied and recorded at every stage the digest reaches).
fn promotion_of(job: &PromotionJob, digest: &Digest) -> String {
    match &job.request.tag {
        Some(tag) => promotion_id(&job.pipeline, &job.stage, &format!("{digest}:{tag}")),
        None => promotion_id(&job.pipeline, &job.stage, digest.as_str()),
    }
}

/// The entry a rollback without `--to` returns to: the newest one that is neither the current
/// digest nor a digest that was itself rolled back from (so two rollbacks in a row go further
/// back instead of flipping between two releases). `history` is newest first.
fn previous_good(history: &[EnvironmentEntry]) -> Option<&EnvironmentEntry> {
    let current = &history.first()?.digest;
    let rolled_back_from: Vec<&str> = history
        .windows(2)
        .filter(|pair| pair[0].promotion_id.starts_with("r-"))
        .map(|pair| pair[1].digest.as_str())
        .collect();
    history.iter().find(|e| &e.digest != current && !rolled_back_from.contains(&e.digest.as_str()))
}

/// The people whose approvals count for `record` in `stage`: distinct persons (names compared in
/// canonical form), allowed by the stage, and never the person who triggered the promotion.
pub fn counted_approvers(stage: &Stage, record: &PromotionRecord) -> Vec<String> {
    let trigger = record.triggered_by.as_deref().and_then(|t| crate::person::canonical(t).ok());
    let mut people: Vec<String> = Vec::new();
    for approval in &record.approvals {
        let Ok(person) = crate::person::canonical(&approval.by) else { continue };
        if Some(&person) != trigger.as_ref() && stage.may_approve(&person) && !people.contains(&person) {
            people.push(person);
        }
    }
    people
}

/// Records a gate decision, unless it repeats the last one (a re-evaluated parked promotion).
fn decide(record: &mut PromotionRecord, gate: &str, decision: &str, detail: String) {
    let repeated = record.gates.last().is_some_and(|d| d.gate == gate && d.decision == decision && d.detail == detail);
    if !repeated {
        record.gates.push(GateDecision { gate: gate.into(), decision: decision.into(), detail, at_ms: now_ms() });
    }
}

/// The stage's target tags for this promotion, templates with unknown values left out.
fn target_tags(stage: &Stage, record: &PromotionRecord) -> Vec<Tag> {
    let mut tags: Vec<Tag> = Vec::new();
    for template in &stage.target_tags {
        let mut value = template.replace("{stage}", stage.name.get_ref());
        for (key, field) in
            [("{tag}", &record.tag), ("{build.number}", &record.build_number), ("{build.id}", &record.build_id)]
        {
            if value.contains(key) {
                match field {
                    Some(v) => value = value.replace(key, v),
                    None => {
                        value.clear();
                        break;
                    }
                }
            }
        }
        if let Ok(tag) = value.parse::<Tag>() {
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
    }
    tags
}

/// `1.2.3` or `v1.2.3`, without pre-release or build suffix.
fn is_release_semver(tag: &str) -> bool {
    let version = tag.strip_prefix('v').unwrap_or(tag);
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(text: &str) -> Stage {
        let config = Config::parse(
            &format!("[registries.\"r.io\"]\n[[pipelines]]\nname = \"p\"\nsource = \"r.io/a\"\n[[pipelines.stages]]\nname = \"dev\"\ntarget = \"r.io/b\"\n{text}"),
            "t.toml",
        )
        .unwrap();
        config.pipelines.into_iter().next().unwrap().stages.into_iter().next().unwrap()
    }

    fn record(tag: Option<&str>, build: Option<&str>) -> PromotionRecord {
        PromotionRecord {
            id: "p-1".into(),
            pipeline: "p".into(),
            stage: "dev".into(),
            source: "r.io/a".into(),
            target: "r.io/b".into(),
            digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            tag: tag.map(str::to_string),
            tag_moved_to: None,
            build_id: None,
            build_number: build.map(str::to_string),
            trigger: "test".into(),
            triggered_by: None,
            state: PromotionState::Pending,
            gates: vec![],
            approvals: vec![],
            error: None,
            attempts: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            finished_at_ms: None,
            job_id: None,
        }
    }

    fn names(tags: Vec<Tag>) -> Vec<String> {
        tags.into_iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn default_target_tags_are_the_tag_the_stage_and_the_build() {
        let dev = stage("");
        assert_eq!(
            names(target_tags(&dev, &record(Some("1.4.2"), Some("20250304.3")))),
            ["1.4.2", "dev", "build-20250304.3"]
        );
        assert_eq!(names(target_tags(&dev, &record(None, None))), ["dev"], "unknown values drop their template");
    }

    #[test]
    fn invalid_or_repeated_target_tags_are_left_out() {
        let custom = stage("target_tags = [\"{stage}\", \"{stage}\", \"release/{tag}\", \"{tag}-{build.number}\"]");
        assert_eq!(names(target_tags(&custom, &record(Some("v1"), Some("7")))), ["dev", "v1-7"]);
    }

    fn entry(digest: &str, promotion: &str) -> EnvironmentEntry {
        EnvironmentEntry {
            digest: digest.into(),
            tag: None,
            build_number: None,
            promotion_id: promotion.into(),
            since_ms: 0,
        }
    }

    #[test]
    fn rollback_returns_to_the_newest_other_digest() {
        let history = [entry("b", "p-2"), entry("a", "p-1")];
        assert_eq!(previous_good(&history).unwrap().digest, "a");
        assert!(previous_good(&[entry("a", "p-1")]).is_none());
    }

    #[test]
    fn a_second_rollback_goes_further_back_instead_of_flipping() {
        // c was bad: rolled back to b. Rolling back again must not return to c.
        let history = [entry("b", "r-9"), entry("c", "p-3"), entry("b", "p-2"), entry("a", "p-1")];
        assert_eq!(previous_good(&history).unwrap().digest, "a");
    }

    #[test]
    fn semver_tags_are_recognized() {
        assert!(is_release_semver("1.2.3"));
        assert!(is_release_semver("v10.0.1"));
        assert!(!is_release_semver("1.2"));
        assert!(!is_release_semver("1.2.3-rc1"));
        assert!(!is_release_semver("latest"));
    }
}
