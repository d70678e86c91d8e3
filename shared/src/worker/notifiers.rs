//! The stage notifiers a configuration asks for, made once when the worker starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Notify};
use crate::deploy::azure::ArmClient;
use crate::deploy::kubernetes::{AksCluster, ApiServer};
use crate::deploy::{AppServiceNotifier, KubernetesNotifier, NoopNotifier, Notifier, WebhookNotifier};
use crate::error::WorkError;

/// Each stage's notifier, keyed by (pipeline, stage).
pub(super) type Notifiers = HashMap<(String, String), Arc<dyn Notifier>>;

/// `arm`: the one ARM client (and token cache) of the worker, made only when needed.
pub(super) fn from_config(config: &Config, arm: &mut Option<Arc<ArmClient>>) -> Result<Notifiers, WorkError> {
    let mut notifiers = Notifiers::new();
    for pipeline in &config.pipelines {
        for stage in &pipeline.stages {
            let notifier: Arc<dyn Notifier> = match &stage.notify {
                None => Arc::new(NoopNotifier),
                Some(Notify::Webhook { url, secret_env, secret_arn }) => {
                    let key =
                        format!("pipelines.{}.stages.{}.notify.secret", pipeline.name.get_ref(), stage.name.get_ref());
                    let secret = config.secret(&key, secret_env.as_ref(), secret_arn.as_ref()).map_err(setup)?;
                    Arc::new(WebhookNotifier::new(url, secret).map_err(setup)?)
                }
                Some(Notify::AppService { subscription, resource_group, app, slot, swap }) => {
                    let arm = shared_arm(arm, config)?;
                    Arc::new(
                        AppServiceNotifier::new(arm, subscription, resource_group, app, slot.as_deref(), *swap)
                            .map_err(setup)?,
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
                                arm: shared_arm(arm, config)?,
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
                            .map_err(|e| setup(format_args!("stage {}: {e}", stage.name.get_ref())))?;
                            KubernetesNotifier::new(api, namespace, deployment, container, timeout)
                        }
                    };
                    Arc::new(notifier.map_err(setup)?)
                }
            };
            notifiers.insert((pipeline.name.get_ref().clone(), stage.name.get_ref().clone()), notifier);
        }
    }
    Ok(notifiers)
}

/// The one ARM client (and token cache) of every Azure notifier, made when the first needs it.
pub(super) fn shared_arm(arm: &mut Option<Arc<ArmClient>>, config: &Config) -> Result<Arc<ArmClient>, WorkError> {
    if let Some(arm) = arm {
        return Ok(arm.clone());
    }
    let made = Arc::new(crate::deploy::azure::arm_client(config).map_err(setup)?);
    *arm = Some(made.clone());
    Ok(made)
}

/// A configuration the worker cannot set up is a permanent error: retrying will not change it.
fn setup(error: impl std::fmt::Display) -> WorkError {
    WorkError::permanent(error.to_string())
}
