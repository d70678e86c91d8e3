//! Azure DevOps service hooks: `build.complete` (a build produced an image: promote it) and
//! release `deployment-completed` (a stage reports deployed or failed; later gates read it).
//! Both the `tfs` / `ms.vss-release.*` and `azure-devops` / `ms.azure-devops-release.*`
//! spellings are accepted; routing is on `eventType`.

use serde::Deserialize;

use super::{Parsed, PayloadError, Sender, non_empty};

/// A build that finished successfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildCompleted {
    pub definition_id: Option<String>,
    pub definition_name: Option<String>,
    pub build_id: String,
    pub build_number: Option<String>,
    pub delivery_id: Option<String>,
}

/// A release stage's deployment outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeploymentCompleted {
    pub environment: String,
    /// `succeeded`, `failed`, `canceled`, `rejected`, `partiallySucceeded` …
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    id: Option<String>,
    event_type: Option<String>,
    resource: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Build {
    id: Option<serde_json::Value>,
    build_number: Option<String>,
    status: Option<String>,
    result: Option<String>,
    definition: Option<Definition>,
}

#[derive(Deserialize)]
struct Definition {
    id: Option<serde_json::Value>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct DeploymentResource {
    environment: Option<Environment>,
}

#[derive(Deserialize)]
struct Environment {
    name: Option<String>,
    status: Option<String>,
    release: Option<Release>,
}

#[derive(Deserialize)]
struct Release {
    id: Option<serde_json::Value>,
    name: Option<String>,
}

fn scalar(value: Option<serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => non_empty(Some(s)),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn is_deployment_completed(event_type: &str) -> bool {
    matches!(
        event_type,
        "ms.vss-release.deployment-completed-event" | "ms.azure-devops-release.deployment-completed-event"
    )
}

pub fn parse(body: &[u8]) -> Result<Parsed, PayloadError> {
    let sender = Sender::AzureDevops;
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| PayloadError::json(sender, e))?;
    let event_type =
        non_empty(envelope.event_type).ok_or_else(|| PayloadError::invalid(sender, "missing `eventType`"))?;
    let resource = envelope.resource.ok_or_else(|| PayloadError::invalid(sender, "missing `resource`"))?;
    let delivery_id = non_empty(envelope.id);
    if event_type == "build.complete" {
        let build: Build = serde_json::from_value(resource).map_err(|e| PayloadError::json(sender, e))?;
        // resourceVersion 2.0: status `completed` + result; 1.0: status `succeeded`.
        let result = non_empty(build.result).or_else(|| non_empty(build.status.clone())).unwrap_or_default();
        if !result.eq_ignore_ascii_case("succeeded") {
            return Ok(Parsed::Ignored(format!("build result `{result}` does not promote anything")));
        }
        let build_id = scalar(build.id).ok_or_else(|| PayloadError::invalid(sender, "build without `resource.id`"))?;
        let (definition_id, definition_name) = match build.definition {
            Some(d) => (scalar(d.id), non_empty(d.name)),
            None => (None, None),
        };
        return Ok(Parsed::Build(BuildCompleted {
            definition_id,
            definition_name,
            build_id,
            build_number: non_empty(build.build_number),
            delivery_id,
        }));
    }
    if is_deployment_completed(&event_type) {
        let deployment: DeploymentResource =
            serde_json::from_value(resource).map_err(|e| PayloadError::json(sender, e))?;
        let environment =
            deployment.environment.ok_or_else(|| PayloadError::invalid(sender, "missing `resource.environment`"))?;
        let name =
            non_empty(environment.name).ok_or_else(|| PayloadError::invalid(sender, "environment without `name`"))?;
        let release = environment.release.and_then(|r| non_empty(r.name).or_else(|| scalar(r.id)));
        return Ok(Parsed::Deployment(DeploymentCompleted {
            environment: name,
            status: non_empty(environment.status).unwrap_or_else(|| "unknown".into()),
            release,
            delivery_id,
        }));
    }
    Ok(Parsed::Ignored(format!("Azure DevOps event `{event_type}` is not handled")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::fixtures::load;

    #[test]
    fn succeeded_build_carries_definition_and_build_ids() {
        let Parsed::Build(build) = parse(&load("azure-devops-build.json")).unwrap() else { panic!() };
        assert_eq!(build.definition_name.as_deref(), Some("shop-api-ci"));
        assert_eq!(build.definition_id.as_deref(), Some("42"));
        assert_eq!(build.build_id, "4711");
        assert_eq!(build.build_number.as_deref(), Some("20250304.3"));
    }

    #[test]
    fn failed_builds_and_other_events_are_ignored() {
        let failed = String::from_utf8(load("azure-devops-build.json")).unwrap().replace("\"succeeded\"", "\"failed\"");
        assert!(matches!(parse(failed.as_bytes()).unwrap(), Parsed::Ignored(_)));
        assert!(matches!(parse(br#"{"eventType":"git.push","resource":{}}"#).unwrap(), Parsed::Ignored(_)));
        assert!(parse(br#"{"eventType":"build.complete"}"#).is_err());
    }

    #[test]
    fn resource_version_one_builds_count_as_succeeded() {
        let v1 = br#"{"eventType":"build.complete","resource":{"id":7,"buildNumber":"7","status":"succeeded","definition":{"id":1,"name":"ci"}}}"#;
        assert!(matches!(parse(v1).unwrap(), Parsed::Build(_)));
    }

    #[test]
    fn both_release_spellings_report_deployments() {
        let classic = load("azure-devops-deployment.json");
        let Parsed::Deployment(d) = parse(&classic).unwrap() else { panic!() };
        assert_eq!(d.environment, "Staging");
        assert_eq!(d.status, "succeeded");
        assert_eq!(d.release.as_deref(), Some("Release-12"));
        let renamed = String::from_utf8(classic)
            .unwrap()
            .replace("ms.vss-release.", "ms.azure-devops-release.")
            .replace("\"rm\"", "\"azure-devops\"");
        assert!(matches!(parse(renamed.as_bytes()).unwrap(), Parsed::Deployment(_)));
    }
}
