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
    /// One of [`DEPLOYMENT_STATUSES`], spelled as there (anything else is refused at intake).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The release definition (pipeline) the release was made from, by id and name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_definition_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_definition_name: Option<String>,
    /// The Azure DevOps project's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The build artifacts the release deployed, when the event names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds: Vec<BuildArtifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
}

/// A build a release deployed: which build definition, and which run of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildArtifact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition_name: Option<String>,
    /// The build number (`definitionReference.version.name`).
    pub build_number: String,
}

/// Release environment and deployment statuses Azure DevOps documents (`EnvironmentStatus`,
/// `DeploymentStatus`); a report with any other status is refused.
pub const DEPLOYMENT_STATUSES: &[&str] = &[
    "succeeded",
    "partiallySucceeded",
    "failed",
    "canceled",
    "rejected",
    "notDeployed",
    "notStarted",
    "inProgress",
    "queued",
    "scheduled",
    "undefined",
];

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

/// `resource` of a deployment-completed event: the classic shape nests status and release
/// under `environment`; the current one under `deployment` (with `deployment.environment`).
#[derive(Deserialize)]
struct DeploymentResource {
    environment: Option<Environment>,
    deployment: Option<Deployment>,
    release: Option<Release>,
    project: Option<Named>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Deployment {
    status: Option<String>,
    deployment_status: Option<String>,
    release: Option<Release>,
    environment: Option<Environment>,
    project: Option<Named>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Environment {
    name: Option<String>,
    status: Option<String>,
    release: Option<Release>,
    release_definition: Option<Named>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Release {
    id: Option<serde_json::Value>,
    name: Option<String>,
    release_definition: Option<Named>,
    project: Option<Named>,
    artifacts: Option<Vec<Artifact>>,
}

#[derive(Deserialize)]
struct Named {
    id: Option<serde_json::Value>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Artifact {
    #[serde(rename = "type")]
    kind: Option<String>,
    /// `definition`, `version`, `project` … (spelled `Definition` in some samples).
    definition_reference: Option<std::collections::BTreeMap<String, Option<Named>>>,
}

impl Artifact {
    fn build(self) -> Option<BuildArtifact> {
        if !self.kind.as_deref().is_some_and(|k| k.eq_ignore_ascii_case("build")) {
            return None;
        }
        let mut reference = self.definition_reference?;
        let mut take = |key: &str| {
            let found = reference.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned()?;
            reference.remove(&found).flatten()
        };
        let version = take("version")?;
        let build_number = non_empty(version.name).or_else(|| scalar(version.id))?;
        let definition = take("definition");
        let (definition_id, definition_name) = match definition {
            Some(d) => (scalar(d.id), non_empty(d.name)),
            None => (None, None),
        };
        Some(BuildArtifact { definition_id, definition_name, build_number })
    }
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
        let resource: DeploymentResource =
            serde_json::from_value(resource).map_err(|e| PayloadError::json(sender, e))?;
        return deployment_completed(resource, delivery_id).map(Parsed::Deployment);
    }
    Ok(Parsed::Ignored(format!("Azure DevOps event `{event_type}` is not handled")))
}

/// Reads both shapes of a deployment-completed `resource`.
fn deployment_completed(
    resource: DeploymentResource,
    delivery_id: Option<String>,
) -> Result<DeploymentCompleted, PayloadError> {
    let sender = Sender::AzureDevops;
    let (environment, status, mut releases, deployment_project) = match (resource.deployment, resource.environment) {
        (Some(deployment), classic) => {
            let environment = deployment.environment.or(classic);
            let status = non_empty(deployment.status)
                .or_else(|| non_empty(deployment.deployment_status))
                .or_else(|| environment.as_ref().and_then(|e| non_empty(e.status.clone())));
            (environment, status, vec![deployment.release], deployment.project)
        }
        (None, Some(environment)) => (Some(environment), None, Vec::new(), None),
        (None, None) => {
            return Err(PayloadError::invalid(sender, "missing `resource.deployment` (or `resource.environment`)"));
        }
    };
    let environment =
        environment.ok_or_else(|| PayloadError::invalid(sender, "missing `resource.deployment.environment`"))?;
    let name =
        non_empty(environment.name).ok_or_else(|| PayloadError::invalid(sender, "environment without `name`"))?;
    let status = status
        .or_else(|| non_empty(environment.status))
        .ok_or_else(|| PayloadError::invalid(sender, "deployment without `status`"))?;
    let status = DEPLOYMENT_STATUSES.iter().find(|known| known.eq_ignore_ascii_case(&status)).ok_or_else(|| {
        PayloadError::invalid(
            sender,
            format!(
                "deployment status `{}` is not one Azure DevOps sends; expected one of {}",
                crate::escape::escape_control(&status),
                DEPLOYMENT_STATUSES.join(", ")
            ),
        )
    })?;
    releases.push(environment.release);
    releases.push(resource.release);
    let releases: Vec<Release> = releases.into_iter().flatten().collect();
    let release = releases.iter().find_map(|r| non_empty(r.name.clone()).or_else(|| scalar(r.id.clone())));
    let definition = releases
        .iter()
        .filter_map(|r| r.release_definition.as_ref())
        .chain(environment.release_definition.as_ref())
        .map(|d| (scalar(d.id.clone()), non_empty(d.name.clone())))
        .find(|(id, name)| id.is_some() || name.is_some());
    let (release_definition_id, release_definition_name) = definition.unwrap_or_default();
    let project = releases
        .iter()
        .filter_map(|r| r.project.as_ref())
        .chain(deployment_project.as_ref())
        .chain(resource.project.as_ref())
        .find_map(|p| non_empty(p.name.clone()));
    let builds =
        releases.into_iter().flat_map(|r| r.artifacts.unwrap_or_default()).filter_map(Artifact::build).collect();
    Ok(DeploymentCompleted {
        environment: name,
        status: status.to_string(),
        release,
        release_definition_id,
        release_definition_name,
        project,
        builds,
        delivery_id,
    })
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

    #[test]
    fn the_current_shape_nests_environment_status_and_release_under_deployment() {
        let Parsed::Deployment(d) = parse(&load("azure-devops-deployment-current.json")).unwrap() else { panic!() };
        assert_eq!(d.environment, "Dev");
        assert_eq!(d.status, "succeeded");
        assert_eq!(d.release.as_deref(), Some("Release-12"));
        assert_eq!(d.release_definition_id.as_deref(), Some("7"));
        assert_eq!(d.release_definition_name.as_deref(), Some("shop-api-cd"));
        assert_eq!(d.project.as_deref(), Some("Shop"));
        assert!(d.builds.is_empty());
        assert_eq!(d.delivery_id.as_deref(), Some("5b1e2c7a-0f3d-4c8e-9a61-2d7f4e8b9c10"));
        // The classic fixture names its project beside the environment.
        let Parsed::Deployment(classic) = parse(&load("azure-devops-deployment.json")).unwrap() else { panic!() };
        assert_eq!(classic.project.as_deref(), Some("Shop"));
    }

    #[test]
    fn build_artifacts_of_the_release_are_carried_and_others_are_not() {
        let Parsed::Deployment(d) = parse(&load("azure-devops-deployment-artifacts.json")).unwrap() else { panic!() };
        assert_eq!(
            d.builds,
            [BuildArtifact {
                definition_id: Some("42".into()),
                definition_name: Some("shop-api-ci".into()),
                build_number: "20250304.3".into(),
            }]
        );
        // Some samples spell the reference keys with a capital letter.
        let capital = String::from_utf8(load("azure-devops-deployment-artifacts.json"))
            .unwrap()
            .replace("\"definition\":", "\"Definition\":")
            .replace("\"version\":", "\"Version\":");
        let Parsed::Deployment(c) = parse(capital.as_bytes()).unwrap() else { panic!() };
        assert_eq!(c.builds, d.builds);
    }

    #[test]
    fn an_unknown_or_missing_status_is_refused_and_the_reason_is_escaped() {
        let forged = String::from_utf8(load("azure-devops-deployment-current.json"))
            .unwrap()
            .replace("\"status\": \"succeeded\"", "\"status\": \"succeeded\\nINFO forged \\u001b[2J\"");
        let err = parse(forged.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("is not one Azure DevOps sends"), "{err}");
        assert!(err.contains("succeeded\\nINFO forged \\u{1b}[2J") && !err.contains('\n'), "{err}");
        let missing = String::from_utf8(load("azure-devops-deployment-current.json"))
            .unwrap()
            .replace("\"status\": \"succeeded\",", "");
        assert!(parse(missing.as_bytes()).unwrap_err().to_string().contains("without `status`"));
        // Known statuses are accepted whatever their case, and spelled as documented.
        let upper = String::from_utf8(load("azure-devops-deployment-current.json"))
            .unwrap()
            .replace("\"succeeded\"", "\"PartiallySucceeded\"");
        let Parsed::Deployment(d) = parse(upper.as_bytes()).unwrap() else { panic!() };
        assert_eq!(d.status, "partiallySucceeded");
    }

    #[test]
    fn a_deployment_event_without_either_shape_says_what_is_missing() {
        let body = br#"{"eventType":"ms.azure-devops-release.deployment-completed-event","resource":{"project":{}}}"#;
        assert!(parse(body).unwrap_err().to_string().contains("resource.deployment"));
    }
}
