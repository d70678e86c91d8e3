//! `moto_server` (PyPI `moto[server]`) as a child process: real SQS and DynamoDB APIs on
//! 127.0.0.1, on a port the OS chose (`-p 0`; moto prints it), killed on drop. Each test starts
//! its own and creates its own queues and tables under unique names.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const INSTALL_MOTO: &str = "pip install \"moto[server]\"";
const REGION: &str = "us-east-1";

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        let program = require("moto_server");
        let mut child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; install it with {INSTALL_MOTO}", program.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let (port_tx, port_rx) = mpsc::channel();
        // Read stderr for the port, then keep draining it: moto logs every request there, and a
        // full pipe would stall it.
        std::thread::spawn(move || {
            let mut early = Vec::new();
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(tx) = &port_tx {
                    if let Some(port) = line.split("Running on http://127.0.0.1:").nth(1) {
                        let _ = tx.send(Ok(port.trim().parse::<u16>().expect("moto's port")));
                        port_tx = None;
                    } else {
                        early.push(line);
                    }
                }
            }
            if let Some(tx) = port_tx {
                let _ = tx.send(Err(early.join("\n")));
            }
        });
        let port = match port_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(port)) => port,
            Ok(Err(output)) => {
                let _ = child.kill();
                panic!("moto_server exited before listening:\n{output}")
            }
            Err(_) => {
                let _ = child.kill();
                panic!("moto_server did not say where it listens within 60 s")
            }
        };
        Moto { child, endpoint: format!("http://127.0.0.1:{port}") }
    }

    /// The standard AWS configuration pointed at this moto (static test credentials), for
    /// code that builds its own clients (secrets, ECR).
    #[allow(dead_code)]
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(
                aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "static"),
            ))
            .build()
    }

    /// The standard AWS settings a Ferry process needs to use this moto: its endpoint, the
    /// region, static test credentials, and no instance-metadata lookups.
    #[allow(dead_code)] // Used by the root crate's tests that start `ferry` and the functions.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "static"))
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }

    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "static"))
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    /// A FIFO queue and its dead-letter queue, tied by a redrive policy whose
    /// `maxReceiveCount` is `safety_net` (the DLQ is found through it). Returns the queue URL.
    #[allow(dead_code)]
    pub async fn fifo_queue_with_dlq(&self, safety_net: u32) -> String {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let sqs = self.sqs();
        let name = format!("ferry-{}", uuid::Uuid::new_v4().simple());
        let dlq = sqs
            .create_queue()
            .queue_name(format!("{name}-dlq.fifo"))
            .attributes(A::FifoQueue, "true")
            .send()
            .await
            .expect("create the dead-letter queue");
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(dlq.queue_url().expect("DLQ URL"))
            .attribute_names(A::QueueArn)
            .send()
            .await
            .expect("DLQ attributes")
            .attributes()
            .and_then(|a| a.get(&A::QueueArn).cloned())
            .expect("DLQ ARN");
        let policy = format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{safety_net}"}}"#);
        sqs.create_queue()
            .queue_name(format!("{name}.fifo"))
            .attributes(A::FifoQueue, "true")
            .attributes(A::RedrivePolicy, policy)
            .send()
            .await
            .expect("create the queue")
            .queue_url()
            .expect("queue URL")
            .to_string()
    }

    /// A table with the key schema Ferry's ledger needs (`pk`, `sk`: S) and TTL on
    /// `expires_at`, as template.yaml and infra/ create it. Returns its name.
    #[allow(dead_code)]
    pub async fn ledger_table(&self) -> String {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TimeToLiveSpecification,
        };
        let dynamodb = self.dynamodb();
        let name = format!("ferry-{}", uuid::Uuid::new_v4().simple());
        let attribute = |name: &str| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build()
        };
        let key = |name: &str, kind| KeySchemaElement::builder().attribute_name(name).key_type(kind).build();
        dynamodb
            .create_table()
            .table_name(&name)
            .attribute_definitions(attribute("pk").unwrap())
            .attribute_definitions(attribute("sk").unwrap())
            .key_schema(key("pk", KeyType::Hash).unwrap())
            .key_schema(key("sk", KeyType::Range).unwrap())
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .expect("create the ledger table");
        dynamodb
            .update_time_to_live()
            .table_name(&name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder().enabled(true).attribute_name("expires_at").build().unwrap(),
            )
            .send()
            .await
            .expect("enable TTL on expires_at");
        name
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Absolute path of `tool` on `PATH`, or a panic saying how to install it: these tests run
/// against real AWS APIs and are never skipped.
fn require(tool: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|candidate| candidate.is_file()).unwrap_or_else(|| {
        panic!(
            "\n\n`{tool}` is required by ferry's conformance tests (SQS and DynamoDB on moto) and was not \
             found on PATH.\nInstall it with:\n\n    {INSTALL_MOTO}\n\n(these tests are never skipped)\n"
        )
    })
}
