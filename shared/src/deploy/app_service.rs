//! Azure App Service (Web App for Containers): point the app, or one of its slots, at the
//! digest, read the configuration back until it shows it, and optionally swap the slot into
//! production and confirm production runs the digest.
//!
//! Classic apps take `siteConfig.linuxFxVersion = "DOCKER|<registry>/<repo>@sha256:…"`
//! (`PATCH …/config/web`); apps with sidecars (`linuxFxVersion = "SITECONTAINERS"`) get the image
//! of their main container (`PUT …/sitecontainers/{name}`). Slot swap is a long-running
//! operation: `Azure-AsyncOperation` is polled for its status when ARM sends one, else
//! `Location` until it stops answering 202.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use reqwest::Method;
use serde_json::{Value, json};

use super::azure::{ArmClient, AzureError};
use super::{Deployment, Notified, Notifier, NotifyError};

/// The Microsoft.Web api-version Ferry speaks (WIRE_FORMATS §7).
pub const API_VERSION: &str = "2024-11-01";

pub struct AppServiceNotifier {
    arm: Arc<ArmClient>,
    /// `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Web/sites/{app}`
    site: String,
    app: String,
    slot: Option<String>,
    swap: bool,
    /// Pause between read-backs and LRO polls when ARM gives no `Retry-After`.
    pub poll_interval: Duration,
    /// How long the configuration may take to show the image, and a swap to finish.
    pub timeout: Duration,
}

impl AppServiceNotifier {
    pub fn new(
        arm: Arc<ArmClient>,
        subscription: &str,
        resource_group: &str,
        app: &str,
        slot: Option<&str>,
        swap: bool,
    ) -> Result<Self, NotifyError> {
        for (key, value) in [("subscription", subscription), ("resource_group", resource_group), ("app", app)]
            .into_iter()
            .chain(slot.map(|s| ("slot", s)))
        {
            let valid = !value.is_empty()
                && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'(' | b')'));
            if !valid {
                return Err(NotifyError::Permanent {
                    target: format!("App Service {app}"),
                    detail: format!("notify.{key} `{value}` is not a valid Azure name"),
                });
            }
        }
        Ok(AppServiceNotifier {
            arm,
            site: format!(
                "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Web/sites/{app}"
            ),
            app: app.to_string(),
            slot: slot.map(str::to_string),
            swap,
            poll_interval: Duration::from_secs(2),
            timeout: Duration::from_secs(600),
        })
    }

    /// What this notifier changes, for messages: `web app shop` or `web app shop, slot staging`.
    fn resource(&self, slot: Option<&str>) -> String {
        match slot {
            Some(slot) => format!("web app {} slot {slot}", self.app),
            None => format!("web app {}", self.app),
        }
    }

    fn path(&self, slot: Option<&str>) -> String {
        match slot {
            Some(slot) => format!("{}/slots/{slot}", self.site),
            None => self.site.clone(),
        }
    }

    async fn deploy(&self, image: &str) -> Result<String, AzureError> {
        let slot = self.slot.as_deref();
        self.set_image(slot, image).await?;
        self.wait_for_image(slot, image).await?;
        let Some(slot) = slot.filter(|_| self.swap) else {
            return Ok(format!("{} runs {image}", self.resource(slot)));
        };
        let resource = format!("swap of {} into production", self.resource(Some(slot)));
        let body = json!({ "targetSlot": "production", "preserveVnet": true });
        let started = self
            .arm
            .send(
                Method::POST,
                &format!("{}/slotsswap", self.path(Some(slot))),
                Some(API_VERSION),
                Some(&body),
                &resource,
            )
            .await?;
        self.arm.wait_for_operation(started, &resource, self.timeout, self.poll_interval).await?;
        self.wait_for_image(None, image).await?;
        Ok(format!("{} swapped into production; web app {} runs {image}", self.resource(Some(slot)), self.app))
    }

    async fn site_config(&self, slot: Option<&str>) -> Result<Value, AzureError> {
        let path = format!("{}/config/web", self.path(slot));
        let resource = format!("{} site config", self.resource(slot));
        Ok(self.arm.send(Method::GET, &path, Some(API_VERSION), None, &resource).await?.body)
    }

    /// The main container of a sidecar-enabled app: its name and its resource.
    async fn main_container(&self, slot: Option<&str>) -> Result<(String, Value), AzureError> {
        let path = format!("{}/sitecontainers", self.path(slot));
        let resource = format!("{} site containers", self.resource(slot));
        let list = self.arm.send(Method::GET, &path, Some(API_VERSION), None, &resource).await?.body;
        let main = list["value"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["properties"]["isMain"] == true))
            .cloned()
            .ok_or_else(|| AzureError::Operation {
                what: resource.clone(),
                code: "NoMainContainer".into(),
                message: "the app uses sitecontainers but none has isMain = true".into(),
            })?;
        let name = main["name"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
        Ok((name, main))
    }

    async fn set_image(&self, slot: Option<&str>, image: &str) -> Result<(), AzureError> {
        let config = self.site_config(slot).await?;
        if config["properties"]["linuxFxVersion"].as_str() == Some("SITECONTAINERS") {
            let (name, mut main) = self.main_container(slot).await?;
            main["properties"]["image"] = json!(image);
            let body = json!({ "properties": main["properties"] });
            let resource = format!("{} site container {name}", self.resource(slot));
            let path = format!("{}/sitecontainers/{name}", self.path(slot));
            self.arm.send(Method::PUT, &path, Some(API_VERSION), Some(&body), &resource).await?;
        } else {
            let body = json!({ "properties": { "linuxFxVersion": format!("DOCKER|{image}") } });
            let resource = format!("{} site config", self.resource(slot));
            let path = format!("{}/config/web", self.path(slot));
            self.arm.send(Method::PATCH, &path, Some(API_VERSION), Some(&body), &resource).await?;
        }
        Ok(())
    }

    /// What the app (or slot) is configured to run: the `linuxFxVersion` image, or the main
    /// site container's.
    async fn configured_image(&self, slot: Option<&str>) -> Result<Option<String>, AzureError> {
        let config = self.site_config(slot).await?;
        let fx = config["properties"]["linuxFxVersion"].as_str().unwrap_or_default();
        if fx == "SITECONTAINERS" {
            let (_, main) = self.main_container(slot).await?;
            return Ok(main["properties"]["image"].as_str().map(str::to_string));
        }
        Ok(fx.strip_prefix("DOCKER|").map(str::to_string))
    }

    async fn wait_for_image(&self, slot: Option<&str>, image: &str) -> Result<(), AzureError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let now = self.configured_image(slot).await?;
            if now.as_deref() == Some(image) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(AzureError::Operation {
                    what: self.resource(slot),
                    code: "ImageNotApplied".into(),
                    message: format!(
                        "after {:?} the site config still runs {} instead of {image}",
                        self.timeout,
                        now.as_deref().unwrap_or("no container image")
                    ),
                });
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }
}

impl Notifier for AppServiceNotifier {
    fn notify<'a>(&'a self, deployment: &'a Deployment) -> BoxFuture<'a, Result<Notified, NotifyError>> {
        Box::pin(async move {
            let target = format!("App Service {}", self.resource(self.slot.as_deref()));
            match self.deploy(&deployment.image).await {
                Ok(detail) => Ok(Notified { confirmed: true, detail }),
                Err(e) if e.is_retryable() => Err(NotifyError::Transient { target, detail: e.to_string() }),
                Err(e) => Err(NotifyError::Permanent { target, detail: e.to_string() }),
            }
        })
    }
}
