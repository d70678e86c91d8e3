//! The AWS infrastructure as code: `template.yaml` (SAM) passes cfn-lint and checkov (every
//! skip explained), and the terraform module in `infra/` is formatted, validates offline and
//! applies to a real AWS API (`moto_server`) — the queue and table alone first, then the
//! functions from stand-in zips — checked back through the AWS APIs.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::{MotoServer, TerraformWorkspace, tools};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn template() -> PathBuf {
    repo_root().join("template.yaml")
}

/// A copy of template.yaml with `from` replaced by `to` (which must occur), for the canaries
/// that show a linter really reads what the real run passes.
fn altered_template(dir: &Path, from: &str, to: &str) -> PathBuf {
    let text = fs::read_to_string(template()).expect("read template.yaml");
    assert!(text.contains(from), "template.yaml no longer contains {from:?}; update this test");
    let path = dir.join("template.yaml");
    fs::write(&path, text.replacen(from, to, 1)).expect("write altered template");
    path
}

fn run(program: &Path, args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn sam_template_passes_cfn_lint() {
    let cfn_lint = tools::cfn_lint();
    let (ok, output) = run(&cfn_lint, &["template.yaml"], &repo_root());
    assert!(ok, "cfn-lint template.yaml found problems:\n{output}");

    // Canary: the same run on a copy whose queue looks up a mapping that does not exist
    // must fail, or the clean result above means nothing.
    let dir = tempfile::tempdir().unwrap();
    let broken = altered_template(dir.path(), "!FindInMap [QueueVisibility,", "!FindInMap [NoSuchMapping,");
    let (ok, output) = run(&cfn_lint, &[broken.to_str().unwrap()], dir.path());
    assert!(!ok && output.contains("NoSuchMapping"), "cfn-lint did not notice a missing mapping:\n{output}");
}

/// checkov's JSON report of one file: the cloudformation framework's entry.
fn checkov_report(checkov: &Path, file: &Path) -> Value {
    let dir = file.parent().unwrap();
    let args = ["-f", file.to_str().unwrap(), "--skip-download", "--framework", "cloudformation", "-o", "json"];
    let out = Command::new(checkov)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", checkov.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON report ({e}); exit {}:\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    match report {
        Value::Array(frameworks) => frameworks
            .into_iter()
            .find(|f| f["check_type"] == "cloudformation")
            .expect("checkov report has a cloudformation entry"),
        report => report,
    }
}

fn check_ids(report: &Value, kind: &str) -> Vec<(String, String)> {
    report["results"][kind]
        .as_array()
        .map(|checks| {
            checks
                .iter()
                .map(|c| {
                    (c["check_id"].as_str().unwrap_or("").to_string(), c["resource"].as_str().unwrap_or("").to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sam_template_passes_checkov_and_every_skip_has_a_reason() {
    let checkov = tools::checkov();
    let report = checkov_report(&checkov, &template());
    let summary = &report["summary"];
    assert_eq!(summary["failed"], 0, "checkov failures in template.yaml: {:?}", check_ids(&report, "failed_checks"));
    assert_eq!(summary["parsing_errors"], 0, "checkov could not parse template.yaml: {summary}");
    // Every resource was read (3 functions, 3 roles, 3 log groups, 2 queues, table, 4 alarms).
    assert!(summary["resource_count"].as_u64().unwrap_or(0) >= 16, "checkov saw too few resources: {summary}");
    assert!(summary["passed"].as_u64().unwrap_or(0) >= 20, "checkov passed too few checks: {summary}");
    for skipped in report["results"]["skipped_checks"].as_array().expect("skipped_checks") {
        let reason = skipped["check_result"]["suppress_comment"].as_str().unwrap_or("");
        assert!(
            reason.len() >= 40,
            "checkov skip {} on {} has no real reason: {reason:?}",
            skipped["check_id"],
            skipped["resource"]
        );
    }

    // Canary: without its skip, the public webhook URL is a finding (checkov reads the URL
    // resource, and the skip is what makes the run clean).
    let dir = tempfile::tempdir().unwrap();
    let unskipped = altered_template(dir.path(), "- id: CKV_AWS_258", "- id: CKV_AWS_999");
    let report = checkov_report(&checkov, &unskipped);
    let failed = check_ids(&report, "failed_checks");
    assert!(
        failed.iter().any(|(id, resource)| id == "CKV_AWS_258" && resource == "AWS::Lambda::Url.WebhookFunctionUrl"),
        "checkov did not flag the unauthenticated Function URL once its skip was gone: {failed:?}"
    );
}

#[test]
fn terraform_module_is_formatted_and_validates_offline() {
    let tf = TerraformWorkspace::copy_of_infra();
    tf.ok("", &["fmt", "-check", "-recursive", "-diff", "-no-color"], &[]);
    for dir in ["", "examples/basic"] {
        tf.ok(dir, &["init", "-backend=false", "-input=false", "-no-color"], &[]);
        let report: Value = serde_json::from_str(&tf.ok(dir, &["validate", "-json", "-no-color"], &[]))
            .expect("terraform validate -json");
        assert_eq!(report["valid"], true, "terraform validate in infra/{dir}: {report:#}");
        assert_eq!(report["warning_count"], 0, "terraform validate warnings in infra/{dir}: {report:#}");
    }

    // Canary: a badly formatted file is reported (fmt -check reads the tree we think it does).
    fs::write(tf.path("zz_unformatted.tf"), "locals {\nx=1\n}\n").unwrap();
    let run = tf.run("", &["fmt", "-check", "-recursive", "-no-color"], &[]);
    assert!(
        !run.status.success() && run.stdout.contains("zz_unformatted.tf"),
        "terraform fmt -check did not report a badly formatted file:\n{}",
        run.output()
    );
}

/// A zip holding a stand-in `bootstrap`: moto stores function code, it never runs it here.
fn stand_in_zip(dir: &Path, name: &str) -> PathBuf {
    let python = tools::require("python3", "apt-get install -y python3");
    let path = dir.join(format!("{name}.zip"));
    let script = "import sys, zipfile\n\
                  with zipfile.ZipFile(sys.argv[1], 'w') as z:\n    \
                  z.writestr('bootstrap', '#!/bin/sh\\nexit 1\\n')\n";
    let (ok, output) = run(&python, &["-c", script, path.to_str().unwrap()], dir);
    assert!(ok, "could not write {}: {output}", path.display());
    path
}

/// The decoded `PolicyDocument` of an IAM role's inline policy (IAM speaks XML, URL-encoded).
async fn role_policy(moto: &MotoServer, role: &str, policy: &str) -> Value {
    let body = query(
        moto,
        "iam",
        &[("Action", "GetRolePolicy"), ("Version", "2010-05-08"), ("RoleName", role), ("PolicyName", policy)],
    )
    .await;
    let encoded = xml_text(&body, "PolicyDocument");
    let decoded: String = reqwest::Url::parse(&format!("http://decode/?d={encoded}"))
        .expect("policy as a query value")
        .query_pairs()
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    serde_json::from_str(&decoded).unwrap_or_else(|e| panic!("policy of {role} is not JSON ({e}): {decoded}"))
}

/// The body of a query-protocol (form-encoded, XML-answering) call to moto.
async fn query(moto: &MotoServer, service: &str, params: &[(&str, &str)]) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/", moto.endpoint()))
        .header(
            "Authorization",
            format!("AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .form(params)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{params:?} to moto: {e}"));
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "{params:?} answered {status}: {body}");
    body
}

/// The text of the first `<tag>` element in `xml`.
fn xml_text<'a>(xml: &'a str, tag: &str) -> &'a str {
    xml.split_once(&format!("<{tag}>"))
        .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
        .map(|(text, _)| text)
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
}

/// Every (action, resource) pair a policy allows.
fn allowed(policy: &Value) -> Vec<(String, String)> {
    let list = |v: &Value| match v {
        Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(String::from)).collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![],
    };
    let mut pairs = Vec::new();
    for statement in policy["Statement"].as_array().expect("Statement list") {
        assert_eq!(statement["Effect"], "Allow");
        for action in list(&statement["Action"]) {
            for resource in list(&statement["Resource"]) {
                pairs.push((action.clone(), resource));
            }
        }
    }
    pairs.sort();
    pairs
}

#[test]
fn terraform_applies_queue_and_table_alone_then_the_functions_to_moto() {
    let moto = MotoServer::start();
    let tf = TerraformWorkspace::copy_of_infra();
    let example = "examples/basic";
    // moto accepts any key; these keep terraform from looking for real ones.
    let aws = [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];
    let endpoint = format!("aws_endpoint_url={}", moto.endpoint());
    tf.ok(example, &["init", "-input=false", "-no-color"], &aws);

    // 1. The queue + table parts alone: no function zips exist.
    let stores_only = [
        "-var",
        endpoint.as_str(),
        "-var",
        "create_functions=false",
        "-var",
        "table_deletion_protection=false",
        "-var",
        "max_receive_count=3",
    ];
    let apply: Vec<&str> =
        ["apply", "-auto-approve", "-input=false", "-no-color"].into_iter().chain(stores_only).collect();
    tf.ok(example, &apply, &aws);
    let outputs: Value =
        serde_json::from_str(&tf.ok(example, &["output", "-json", "-no-color"], &aws)).expect("outputs");
    let queue_url = outputs["queue_url"]["value"].as_str().expect("queue_url output").to_string();
    let dlq_url = outputs["dead_letter_queue_url"]["value"].as_str().expect("dead_letter_queue_url output").to_string();
    let dlq_arn = outputs["dead_letter_queue_arn"]["value"].as_str().expect("dead_letter_queue_arn output").to_string();
    let table = outputs["table_name"]["value"].as_str().expect("table_name output").to_string();
    assert!(queue_url.starts_with(moto.endpoint()), "queue made somewhere else than moto: {queue_url}");
    assert_eq!(outputs["webhook_url"]["value"], Value::Null, "functions made with create_functions = false");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let attributes = &moto
            .call("sqs", "AmazonSQS.GetQueueAttributes", json!({"QueueUrl": queue_url, "AttributeNames": ["All"]}))
            .await["Attributes"];
        assert_eq!(attributes["FifoQueue"], "true", "{attributes:#}");
        assert_eq!(attributes["ContentBasedDeduplication"], "false", "Ferry sets dedup ids: {attributes:#}");
        assert_eq!(attributes["VisibilityTimeout"], "1800", "6 x the 300 s worker timeout: {attributes:#}");
        let redrive: Value = serde_json::from_str(attributes["RedrivePolicy"].as_str().expect("RedrivePolicy"))
            .expect("RedrivePolicy is JSON");
        assert_eq!(redrive["deadLetterTargetArn"], dlq_arn.as_str(), "{redrive}");
        assert_eq!(redrive["maxReceiveCount"].to_string().trim_matches('"'), "3", "{redrive}");
        let dlq = &moto
            .call("sqs", "AmazonSQS.GetQueueAttributes", json!({"QueueUrl": dlq_url, "AttributeNames": ["All"]}))
            .await["Attributes"];
        assert_eq!(dlq["FifoQueue"], "true", "a FIFO queue needs a FIFO DLQ: {dlq:#}");

        let described = &moto.call("dynamodb", "DynamoDB_20120810.DescribeTable", json!({"TableName": table})).await["Table"];
        let mut keys: Vec<(String, String)> = described["KeySchema"]
            .as_array()
            .expect("KeySchema")
            .iter()
            .map(|k| (k["AttributeName"].as_str().unwrap().into(), k["KeyType"].as_str().unwrap().into()))
            .collect();
        keys.sort();
        assert_eq!(keys, [("pk".into(), "HASH".into()), ("sk".into(), "RANGE".into())], "{described:#}");
        for attribute in described["AttributeDefinitions"].as_array().expect("AttributeDefinitions") {
            assert_eq!(attribute["AttributeType"], "S", "{described:#}");
        }
        assert_eq!(described["BillingModeSummary"]["BillingMode"], "PAY_PER_REQUEST", "{described:#}");
        assert_eq!(described["SSEDescription"]["Status"], "ENABLED", "{described:#}");
        let ttl = &moto.call("dynamodb", "DynamoDB_20120810.DescribeTimeToLive", json!({"TableName": table})).await
            ["TimeToLiveDescription"];
        assert_eq!(ttl["AttributeName"], "expires_at", "{ttl:#}");
        assert_eq!(ttl["TimeToLiveStatus"], "ENABLED", "{ttl:#}");
        let backups = &moto.call("dynamodb", "DynamoDB_20120810.DescribeContinuousBackups", json!({"TableName": table})).await
            ["ContinuousBackupsDescription"];
        assert_eq!(backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"], "ENABLED", "{backups:#}");

        let alarm = query(
            &moto,
            "monitoring",
            &[("Action", "DescribeAlarms"), ("Version", "2010-08-01"), ("AlarmNames.member.1", "ferry-dead-letters")],
        )
        .await;
        assert_eq!(xml_text(&alarm, "MetricName"), "ApproximateNumberOfMessagesVisible", "{alarm}");
        assert_eq!(xml_text(&alarm, "ComparisonOperator"), "GreaterThanThreshold", "{alarm}");
        assert_eq!(xml_text(&alarm, "Threshold").parse::<f64>().ok(), Some(0.0), "{alarm}");
        assert_eq!(xml_text(xml_text(&alarm, "Dimensions"), "Value"), "ferry-jobs-dlq.fifo", "{alarm}");

        let functions = moto.get("lambda", "/2015-03-31/functions/").await;
        assert_eq!(functions["Functions"], json!([]), "create_functions = false made functions");
    });

    // 2. Asking for functions without zips is refused with what to do.
    let no_zips: Vec<&str> = ["plan", "-input=false", "-no-color", "-var", endpoint.as_str()].into_iter().collect();
    let refused = tf.run(example, &no_zips, &aws);
    assert!(
        !refused.status.success() && refused.stderr.contains("webhook_zip is not set"),
        "plan with functions but no zips:\n{}",
        refused.output()
    );

    // 3. The functions on the same stack, from stand-in zips.
    let zips = tempfile::tempdir().unwrap();
    let zip_vars: Vec<String> = ["webhook", "worker", "api"]
        .iter()
        .map(|name| format!("{name}_zip={}", stand_in_zip(zips.path(), name).display()))
        .collect();
    let secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ferry/acr-AbCdEf";
    let secret_var = format!("secret_arns=[\"{secret}\"]");
    let config_var = "ferry_config=[sources.acr]\nsecret_arn = \"arn:aws:secretsmanager:us-east-1:123456789012:secret:ferry/acr-AbCdEf\"\n";
    let mut apply: Vec<&str> = vec!["apply", "-auto-approve", "-input=false", "-no-color"];
    apply.extend(["-var", endpoint.as_str(), "-var", "table_deletion_protection=false", "-var", "max_receive_count=3"]);
    apply.extend(["-var", secret_var.as_str(), "-var", config_var]);
    for var in &zip_vars {
        apply.extend(["-var", var.as_str()]);
    }
    tf.ok(example, &apply, &aws);

    rt.block_on(async {
        let queue_arn = "arn:aws:sqs:us-east-1:123456789012:ferry-jobs.fifo";
        let table_arn = "arn:aws:dynamodb:us-east-1:123456789012:table/ferry-ledger";
        for name in ["webhook", "worker", "api"] {
            let config = &moto.get("lambda", &format!("/2015-03-31/functions/ferry-{name}")).await["Configuration"];
            assert_eq!(config["Runtime"], "provided.al2023", "{config:#}");
            assert_eq!(config["Handler"], "bootstrap", "{config:#}");
            assert_eq!(config["Architectures"], json!(["arm64"]), "{config:#}");
            let ferry_config = config["Environment"]["Variables"]["FERRY_CONFIG"].as_str().expect("FERRY_CONFIG");
            assert!(
                ferry_config.starts_with("[sources.acr]\nsecret_arn = ")
                    && ferry_config.contains(&format!("[queue]\nkind = \"sqs\"\nurl = \"{queue_url}\""))
                    && ferry_config.contains(&format!("[ledger]\nkind = \"dynamodb\"\ntable = \"{table}\"")),
                "FERRY_CONFIG of ferry-{name} is not the operator's config plus the stack's stores:\n{ferry_config}"
            );
            let policy = allowed(&role_policy(&moto, &format!("ferry-{name}"), name).await);
            assert!(policy.contains(&("secretsmanager:GetSecretValue".into(), secret.into())), "{name}: {policy:?}");
            assert!(
                policy
                    .iter()
                    .all(|(_, resource)| [queue_arn, dlq_arn.as_str(), table_arn, secret].contains(&resource.as_str())),
                "ferry-{name} may touch more than the stack's queue, DLQ, table and secrets: {policy:?}"
            );
        }

        let webhook = allowed(&role_policy(&moto, "ferry-webhook", "webhook").await);
        assert!(
            webhook.iter().all(|(action, _)| [
                "sqs:SendMessage",
                "sqs:GetQueueAttributes",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "secretsmanager:GetSecretValue"
            ]
            .contains(&action.as_str())),
            "the webhook may do more than queue, guard replays and read secrets: {webhook:?}"
        );
        assert!(
            !webhook.iter().any(|(_, resource)| resource == &dlq_arn),
            "the webhook never touches the DLQ: {webhook:?}"
        );
        let worker = allowed(&role_policy(&moto, "ferry-worker", "worker").await);
        for action in ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"] {
            assert!(worker.contains(&(action.into(), queue_arn.into())), "worker lacks {action}: {worker:?}");
        }

        let webhook_url = &moto.get("lambda", "/2021-10-31/functions/ferry-webhook/url").await;
        assert_eq!(webhook_url["AuthType"], "NONE", "{webhook_url:#}");
        let grants = moto.get("lambda", "/2015-03-31/functions/ferry-webhook/policy").await;
        let grants: Value = serde_json::from_str(grants["Policy"].as_str().expect("Policy")).expect("policy JSON");
        assert!(
            grants["Statement"].as_array().expect("Statement").iter().any(
                |g| g["Action"] == "lambda:InvokeFunctionUrl"
                && (g["Principal"] == "*" || g["Principal"]["AWS"] == "*")
                // AWS puts the auth type in a condition; moto keeps it as a field.
                && (g["Condition"]["StringEquals"]["lambda:FunctionUrlAuthType"] == "NONE"
                    || g["FunctionUrlAuthType"] == "NONE")
            ),
            "senders may not call the webhook URL: {grants:#}"
        );
        let api_url = &moto.get("lambda", "/2021-10-31/functions/ferry-api/url").await;
        assert_eq!(api_url["AuthType"], "AWS_IAM", "{api_url:#}");

        let mappings = moto.get("lambda", "/2015-03-31/event-source-mappings/").await;
        let mappings = mappings["EventSourceMappings"].as_array().expect("EventSourceMappings");
        assert_eq!(mappings.len(), 1, "{mappings:#?}");
        assert_eq!(mappings[0]["EventSourceArn"], queue_arn);
        assert!(mappings[0]["FunctionArn"].as_str().unwrap_or("").ends_with(":function:ferry-worker"), "{mappings:#?}");
        assert_eq!(mappings[0]["FunctionResponseTypes"], json!(["ReportBatchItemFailures"]), "{mappings:#?}");
    });
    drop(moto);
}
