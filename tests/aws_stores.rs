//! `ferry serve` and the operator commands on SQS and DynamoDB: the stores come from
//! `[queue]`/`[ledger]` through the one factory, with the standard AWS configuration
//! (`AWS_ENDPOINT_URL` pointing at `moto_server`).

#[path = "../shared/tests/conformance/moto.rs"]
mod moto;
mod support;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use serde_json::{Value, json};
use support::registry::free_port;
use support::{FerryServer, ferry};

const SECRET: &str = "aws-stores-generic-secret";

fn config(queue_url: &str, table: &str) -> String {
    format!(
        r#"
[worker]
enabled = false

[queue]
kind = "sqs"
url = "{queue_url}"

[ledger]
kind = "dynamodb"
table = "{table}"

[registries."build.example:5000"]
[registries."dev.example:5000"]

[sources.generic]
secret_env = "AWS_STORES_SECRET"

[[pipelines]]
name = "shop-api"
source = "build.example:5000/shop/api"
  [[pipelines.stages]]
  name = "dev"
  target = "dev.example:5000/shop/api"
"#
    )
}

#[test]
fn serve_queues_into_sqs_and_operator_commands_open_the_same_stores() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let moto = moto::Moto::start();
    let (queue_url, table) =
        runtime.block_on(async { (moto.fifo_queue_with_dlq(10).await, moto.ledger_table().await) });
    let mut envs = moto.aws_env();
    envs.push(("AWS_STORES_SECRET", SECRET.into()));
    let env_refs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = FerryServer::start(free_port(), &config(&queue_url, &table), &env_refs);

    let digest = format!("sha256:{}", "ab".repeat(32));
    let (status, answer) = server
        .post_generic(SECRET, &json!({ "repository": "build.example:5000/shop/api", "tag": "1.0", "digest": digest }));
    assert_eq!(status, 202, "{answer:#}\n{}", server.log());
    // SQS cannot say whether the send was a duplicate: the answer says `null`, not a guess.
    assert_eq!(answer["jobs"][0]["duplicate"], Value::Null, "{answer:#}");
    let id = answer["jobs"][0]["id"].as_str().expect("job id").to_string();

    // The job is in the SQS queue, in its stage's group.
    let message = runtime.block_on(async {
        moto.sqs()
            .receive_message()
            .queue_url(&queue_url)
            .visibility_timeout(0)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default()
    });
    assert_eq!(message.len(), 1, "{message:?}");
    assert_eq!(message[0].message_id(), Some(id.as_str()));
    let job: Value = serde_json::from_str(message[0].body().unwrap()).unwrap();
    assert_eq!(
        (job["kind"].as_str(), job["pipeline"].as_str(), job["stage"].as_str()),
        (Some("promote"), Some("shop-api"), Some("dev"))
    );
    let group = message[0].attributes().and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId)).cloned();
    assert_eq!(group.as_deref(), Some("shop-api/dev"));

    // `--config` opens SQS and DynamoDB, not SQLite files.
    let with_aws = |command: support::FerryCommand| {
        envs.iter().fold(command.args(["--config".as_ref(), server.config_path().as_os_str()]), |c, (k, v)| c.env(k, v))
    };
    let history = with_aws(ferry("history").args(["shop-api", "--json"])).run();
    assert_eq!(history.json(), json!([]), "nothing promoted yet");
    let dead = with_aws(ferry("dlq").args(["list", "--json"])).run();
    assert_eq!(dead.json(), json!([]));
    assert!(!server.dir().join("data").join("queue.db").exists(), "no SQLite queue was created");
    assert!(!server.dir().join("data").join("ledger.db").exists(), "no SQLite ledger was created");
}

#[test]
fn a_queue_that_does_not_exist_is_named_in_the_error() {
    let moto = moto::Moto::start();
    let envs = moto.aws_env();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    let missing = format!("{}/000000000000/missing.fifo", moto.endpoint);
    std::fs::write(&path, format!("[server]\ndata_dir = {:?}\n{}", dir.path().join("data"), config(&missing, "t")))
        .unwrap();
    let run = envs.iter().fold(ferry("dlq").args(["list", "--config"]).arg(&path), |c, (k, v)| c.env(k, v)).run();
    let error = run.failure();
    assert!(error.contains("queue:") && error.contains("missing.fifo"), "{error}");
}
