//! Approval notices: a message in Microsoft Teams and Slack channels when a promotion starts
//! waiting for approval and when it is decided (approved, rejected, expired), so approvers learn
//! of it where they are.
//!
//! Notices never hold a promotion up: they are sent in the background (on AWS Lambda, a notice
//! still in flight when an invocation ends is sent when the environment next runs, or lost if it
//! is recycled), each channel gets a few attempts, and one that keeps failing is logged and
//! skipped. They are sent at least once — a job
//! redelivered after a crash between the gate decision and its ledger record may send one again.
//! A channel's URL is a secret (Slack and Teams webhook URLs carry their own credential), so it
//! comes from `url_env` / `url_arn` and is never logged.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Config;
use crate::error::WorkError;
use crate::ledger::PromotionRecord;
use crate::registry::auth::Secret;

/// Attempts per channel and notice; transient failures (network, 429, 5xx) are tried again.
const ATTEMPTS: u32 = 3;
/// Deadline of one request to a channel.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `[[notices]]`: one channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeChannel {
    pub kind: NoticeKind,
    /// Environment variable holding the channel's incoming-webhook URL.
    pub url_env: Option<String>,
    /// Or the Secrets Manager secret / SSM SecureString parameter (ARN) holding it.
    pub url_arn: Option<String>,
    /// Only promotions of these pipelines (default: every pipeline).
    #[serde(default)]
    pub pipelines: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeKind {
    /// A Slack incoming webhook (`{"text", "blocks"}`).
    Slack,
    /// A Teams Workflows "post to a channel when a webhook request is received" URL, or a
    /// legacy Teams incoming webhook: an Adaptive Card in a `message` attachment.
    Teams,
}

/// What happened to a promotion at its approval gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Parked: waiting for `need` approvals.
    Waiting {
        need: u32,
    },
    Approved {
        by: Vec<String>,
    },
    Rejected {
        by: String,
        reason: Option<String>,
    },
    /// Not approved in time.
    Expired {
        after: String,
    },
}

struct Channel {
    kind: NoticeKind,
    /// `notices[N]`, for logs (the URL is a secret).
    name: String,
    url: Secret,
    pipelines: Vec<String>,
}

/// Every configured channel, and where the console shows a promotion.
pub struct Notices {
    channels: Vec<Channel>,
    console: Option<String>,
    http: reqwest::Client,
}

impl Notices {
    pub fn from_config(config: &Config) -> Result<Self, WorkError> {
        let mut channels = Vec::new();
        for (index, channel) in config.notices.iter().enumerate() {
            let name = format!("notices[{index}]");
            let url = config
                .secret(&format!("notices.{index}.url"), channel.url_env.as_ref(), channel.url_arn.as_ref())
                .map_err(|e| WorkError::permanent(e.to_string()))?
                .ok_or_else(|| WorkError::permanent(format!("{name}: set `url_env` or `url_arn`")))?;
            let parsed = url::Url::parse(url.expose())
                .map_err(|_| WorkError::permanent(format!("{name}: the channel URL is not a URL")))?;
            let plain_loopback = parsed.scheme() == "http" && crate::deploy::azure::is_loopback(&parsed);
            if parsed.scheme() != "https" && !plain_loopback {
                return Err(WorkError::permanent(format!(
                    "{name}: the channel URL must use https:// (plain http only for 127.0.0.0/8, ::1 or localhost)"
                )));
            }
            channels.push(Channel { kind: channel.kind, name, url, pipelines: channel.pipelines.clone() });
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WorkError::permanent(format!("notices: {e}")))?;
        let console = config.server.public_url.clone();
        if let Some(public_url) = &console {
            let scheme = url::Url::parse(public_url).map(|u| u.scheme().to_string());
            if !matches!(scheme.as_deref(), Ok("https" | "http")) {
                return Err(WorkError::permanent(format!(
                    "server.public_url: `{public_url}` is not an http(s) URL (e.g. https://ferry.example.com)"
                )));
            }
        }
        Ok(Notices { channels, console, http })
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Tells every channel that follows `record`'s pipeline about `decision`; returns when each
    /// channel took it or gave up (failures are logged, never returned).
    pub async fn announce(&self, record: &PromotionRecord, decision: &Decision) {
        let channels: Vec<&Channel> =
            self.channels.iter().filter(|c| c.pipelines.is_empty() || c.pipelines.contains(&record.pipeline)).collect();
        if channels.is_empty() {
            return;
        }
        let message = Message::new(record, decision, self.console.as_deref());
        let sends = channels.into_iter().map(|channel| self.send(channel, &message));
        futures_util::future::join_all(sends).await;
    }

    async fn send(&self, channel: &Channel, message: &Message) {
        let body = match channel.kind {
            NoticeKind::Slack => message.slack(),
            NoticeKind::Teams => message.teams(),
        };
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            let answer = self.http.post(channel.url.expose()).json(&body).send().await;
            let (retry, why) = match answer {
                Ok(response) if response.status().is_success() => return,
                Ok(response) => {
                    let status = response.status();
                    let retry = status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
                    let text = response.text().await.unwrap_or_default();
                    let text: String = text.chars().take(200).collect();
                    (retry, format!("answered {status}: {}", crate::escape::escape_control(text.trim())))
                }
                // Without the URL: reqwest's error names it, and it is the channel's secret.
                Err(e) => (true, format!("cannot be reached: {}", e.without_url())),
            };
            if !retry || attempt == ATTEMPTS {
                tracing::warn!(
                    channel = %channel.name,
                    promotion = %message.promotion,
                    attempts = attempt,
                    "approval notice not delivered: the channel {why}"
                );
                return;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
}

/// One notice, ready to be written for either kind of channel.
struct Message {
    promotion: String,
    title: String,
    lines: Vec<String>,
    link: Option<String>,
}

impl Message {
    fn new(record: &PromotionRecord, decision: &Decision, console: Option<&str>) -> Self {
        let subject = format!("{} → {}", record.pipeline, record.stage);
        let title = match decision {
            Decision::Waiting { need } => {
                let people = if *need == 1 { "1 approval" } else { &format!("{need} approvals") };
                format!("{subject}: waiting for {people}")
            }
            Decision::Approved { .. } => format!("{subject}: approved"),
            Decision::Rejected { .. } => format!("{subject}: rejected"),
            Decision::Expired { .. } => format!("{subject}: approval expired"),
        };
        let image = match &record.tag {
            Some(tag) => format!("{}:{tag}@{}", record.source, record.digest),
            None => format!("{}@{}", record.source, record.digest),
        };
        let mut lines = vec![format!("Image: {image}")];
        if let Some(build) = &record.build_number {
            lines.push(format!("Build: {build}"));
        }
        if let Some(by) = &record.triggered_by {
            lines.push(format!("Promoted by: {by}"));
        }
        match decision {
            Decision::Waiting { .. } => lines.push(format!("Approve: ferry approve {}", record.id)),
            Decision::Approved { by } => lines.push(format!("Approved by: {}", by.join(", "))),
            Decision::Rejected { by, reason } => {
                lines.push(format!("Rejected by: {by}"));
                if let Some(reason) = reason {
                    lines.push(format!("Reason: {reason}"));
                }
            }
            Decision::Expired { after } => lines.push(format!("Not approved within {after}")),
        }
        lines.push(format!("Promotion: {}", record.id));
        // Names and reasons come from people and payloads: no control characters into a channel.
        let lines = lines.iter().map(|l| crate::escape::escape_control(l).to_string()).collect();
        let link = console.map(|base| format!("{}/promotions/{}", base.trim_end_matches('/'), record.id));
        Message { promotion: record.id.clone(), title: crate::escape::escape_control(&title).to_string(), lines, link }
    }

    /// A Slack incoming-webhook message: `text` for notifications, `blocks` for the channel.
    fn slack(&self) -> Value {
        let mut details = self.lines.iter().map(|l| slack_escape(l)).collect::<Vec<_>>().join("\n");
        if let Some(link) = &self.link {
            details.push_str(&format!("\n<{link}|Open in Ferry>"));
        }
        json!({
            "text": self.title,
            "blocks": [
                { "type": "header", "text": { "type": "plain_text", "text": self.title } },
                { "type": "section", "text": { "type": "mrkdwn", "text": details } },
            ],
        })
    }

    /// An Adaptive Card in a `message` attachment, the shape Teams Workflows webhooks take.
    fn teams(&self) -> Value {
        let mut body = vec![
            json!({ "type": "TextBlock", "text": self.title, "weight": "Bolder", "size": "Medium", "wrap": true }),
        ];
        body.extend(self.lines.iter().map(|l| json!({ "type": "TextBlock", "text": l, "wrap": true })));
        let mut card = json!({
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": body,
        });
        if let Some(link) = &self.link {
            card["actions"] = json!([{ "type": "Action.OpenUrl", "title": "Open in Ferry", "url": link }]);
        }
        json!({
            "type": "message",
            "attachments": [{ "contentType": "application/vnd.microsoft.card.adaptive", "content": card }],
        })
    }
}

/// Slack's mrkdwn control characters, so names and reasons show as written.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::PromotionState;

    fn record() -> PromotionRecord {
        PromotionRecord {
            id: "p-1234".into(),
            pipeline: "shop-api".into(),
            stage: "prod".into(),
            source: "r.io/shop/api".into(),
            target: "p.io/shop/api".into(),
            digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            tag: Some("1.4.2".into()),
            tag_moved_to: None,
            build_id: None,
            build_number: Some("20261130.7".into()),
            trigger: "webhook:acr".into(),
            triggered_by: Some("<@U123> alice\u{1b}[31m".into()),
            state: PromotionState::AwaitingApproval,
            gates: vec![],
            approvals: vec![],
            error: None,
            attempts: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            finished_at_ms: None,
            job_id: None,
        }
    }

    #[test]
    fn a_waiting_notice_names_the_image_the_build_and_how_to_approve() {
        let message = Message::new(&record(), &Decision::Waiting { need: 2 }, Some("https://ferry.example/"));
        assert_eq!(message.title, "shop-api → prod: waiting for 2 approvals");
        let slack = message.slack();
        assert_eq!(slack["text"], "shop-api → prod: waiting for 2 approvals");
        let details = slack["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(details.contains("r.io/shop/api:1.4.2@sha256:0123"), "{details}");
        assert!(details.contains("Build: 20261130.7") && details.contains("ferry approve p-1234"), "{details}");
        assert!(details.ends_with("<https://ferry.example/promotions/p-1234|Open in Ferry>"), "{details}");
        let teams = message.teams();
        assert_eq!(teams["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");
        let card = &teams["attachments"][0]["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["actions"][0]["url"], "https://ferry.example/promotions/p-1234");
    }

    #[test]
    fn a_channel_without_a_url_or_for_an_unknown_pipeline_is_refused_when_parsed() {
        let refused = |text: &str| Config::parse(text, "ferry.toml").unwrap_err().to_string();
        let error = refused("[[notices]]\nkind = \"slack\"\n");
        assert!(error.contains("notices.0: set `url_env` or `url_arn`"), "{error}");
        let error = refused("[[notices]]\nkind = \"teams\"\nurl_env = \"U\"\npipelines = [\"nope\"]\n");
        assert!(error.contains("notices.0.pipelines: no pipeline is named `nope`"), "{error}");
        let error = refused("[[notices]]\nkind = \"email\"\nurl_env = \"U\"\n");
        assert!(error.contains("unknown variant `email`"), "{error}");
    }

    #[test]
    fn names_from_outside_cannot_mention_or_inject_into_a_channel() {
        let message = Message::new(&record(), &Decision::Rejected { by: "bob".into(), reason: None }, None);
        let slack = message.slack().to_string();
        assert!(!slack.contains("<@U123>"), "a Slack mention passed through: {slack}");
        assert!(!slack.contains('\u{1b}'), "an escape sequence passed through: {slack}");
        assert!(message.teams()["attachments"][0]["content"].get("actions").is_none(), "no console, no link");
    }
}
