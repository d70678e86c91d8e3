//! Secrets named by ARN (`*_arn`) read from Secrets Manager and SSM on `moto_server`, and ECR
//! credentials from `GetAuthorizationToken` there.

#[path = "conformance/moto.rs"]
mod moto;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ferry_core::config::Config;
use ferry_core::http::{Intake, SIGNATURE_HEADER, TIMESTAMP_HEADER, router};
use ferry_core::intake::verify::generic_signature;
use ferry_core::queue::{JobQueue, SqliteQueue, SqliteQueueOptions};
use ferry_core::registry::auth::Credential;
use ferry_core::registry::ecr::EcrCredentials;
use tower::ServiceExt;

const GENERIC_SECRET: &str = "aws-secrets-generic-secret";
const OPERATOR_TOKEN: &str = "aws-secrets-operator-token-0123";

/// A Secrets Manager secret holding `value`; its ARN.
async fn secret(sdk: &aws_config::SdkConfig, value: &str) -> String {
    aws_sdk_secretsmanager::Client::new(sdk)
        .create_secret()
        .name(format!("ferry/{}", uuid::Uuid::new_v4().simple()))
        .secret_string(value)
        .send()
        .await
        .expect("create the secret")
        .arn()
        .expect("secret ARN")
        .to_string()
}

/// An SSM SecureString parameter holding `value`; its ARN.
async fn secure_parameter(sdk: &aws_config::SdkConfig, value: &str) -> String {
    let name = format!("/ferry/{}", uuid::Uuid::new_v4().simple());
    aws_sdk_ssm::Client::new(sdk)
        .put_parameter()
        .name(&name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .expect("put the parameter");
    format!("arn:aws:ssm:us-east-1:123456789012:parameter{name}")
}

fn config(source_secret_arn: &str, operator_token_arn: &str) -> Config {
    Config::parse(
        &format!(
            r#"
[server]
operator_token_arn = "{operator_token_arn}"
[registries."127.0.0.1:5001"]
[registries."127.0.0.1:5002"]
[sources.generic]
secret_arn = "{source_secret_arn}"
[[pipelines]]
name = "local"
source = "127.0.0.1:5001/shop/api"
  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/shop/api"
"#
        ),
        "test.toml",
    )
    .expect("a configuration with ARNs parses")
}

fn signed(secret: &str, body: &str) -> Request<Body> {
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
    Request::post("/hooks/generic")
        .header("content-type", "application/json")
        .header(TIMESTAMP_HEADER, &timestamp)
        .header(SIGNATURE_HEADER, generic_signature(secret.as_bytes(), &timestamp, body.as_bytes()))
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn source_secret_and_operator_token_come_from_arns_and_intake_verifies_with_the_secret() {
    let moto = moto::Moto::start();
    let sdk = moto.sdk_config();
    let source_arn = secret(&sdk, GENERIC_SECRET).await;
    let token_arn = secure_parameter(&sdk, OPERATOR_TOKEN).await;
    let mut config = config(&source_arn, &token_arn);

    // Before start-up reads them, nothing pretends to have the secrets.
    let before = ferry_core::api::operator_token(&config).unwrap_err();
    assert!(before.contains("server.operator_token_arn") && before.contains(&token_arn), "{before}");

    config.read_secrets_with(&sdk).await.expect("secrets read from moto");
    let token = ferry_core::api::operator_token(&config).unwrap().expect("the API is on");
    assert_eq!(token.expose(), OPERATOR_TOKEN, "the SSM SecureString's decrypted value is the token");
    for (name, value) in std::env::vars() {
        assert!(value != GENERIC_SECRET && value != OPERATOR_TOKEN, "{name} holds a secret");
    }

    let dir = tempfile::tempdir().unwrap();
    let queue: Arc<dyn JobQueue> =
        Arc::new(SqliteQueue::open(&dir.path().join("queue.db"), SqliteQueueOptions::default()).unwrap());
    let app = router(Arc::new(Intake::new(&config, queue.clone()).unwrap()));
    let body =
        format!(r#"{{"repository":"127.0.0.1:5001/shop/api","tag":"1.0","digest":"sha256:{}"}}"#, "ab".repeat(32));

    let forged = app.clone().oneshot(signed("not-the-secret", &body)).await.unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let accepted = app.oneshot(signed(GENERIC_SECRET, &body)).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED, "signed with the Secrets Manager secret");
    let queued = queue.receive(10, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(queued.len(), 1, "the webhook was queued once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_that_cannot_be_read_is_named_with_its_key_and_arn() {
    let moto = moto::Moto::start();
    let sdk = moto.sdk_config();
    let token_arn = secure_parameter(&sdk, OPERATOR_TOKEN).await;
    let missing_secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ferry/missing-AbCdEf";
    let error = config(missing_secret, &token_arn).read_secrets_with(&sdk).await.unwrap_err().to_string();
    assert!(
        error.contains("sources.generic.secret_arn")
            && error.contains(missing_secret)
            && error.contains("check the ARN"),
        "{error}"
    );

    let source_arn = secret(&sdk, GENERIC_SECRET).await;
    let missing_parameter = "arn:aws:ssm:us-east-1:123456789012:parameter/ferry/missing";
    let error = config(&source_arn, missing_parameter).read_secrets_with(&sdk).await.unwrap_err().to_string();
    assert!(
        error.contains("server.operator_token_arn")
            && error.contains(missing_parameter)
            && error.contains("ParameterNotFound"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_credentials_are_user_aws_and_the_decoded_token_password() {
    let moto = moto::Moto::start();
    for host in ["123456789012.dkr.ecr.us-east-1.amazonaws.com", "127.0.0.1:5000"] {
        let ecr = EcrCredentials::with_sdk(host, moto.sdk_config());
        let Credential::Basic { username, password } = ecr.credential().await.expect("a token from moto") else {
            panic!("ECR gives basic auth")
        };
        assert_eq!(username, "AWS", "{host}");
        // moto's token is base64 `AWS:<account>-auth-token`.
        assert_eq!(password.expose(), "123456789012-auth-token", "{host}");
    }
}

/// One IAM query-API call to moto while it still takes requests without authentication (the
/// service is named in the credential scope); the response XML.
async fn iam(moto: &moto::Moto, params: &[(&str, &str)]) -> String {
    let response = reqwest::Client::new()
        .post(&moto.endpoint)
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
        )
        .form(&[params, &[("Version", "2010-05-08")]].concat())
        .send()
        .await
        .expect("moto answers");
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "IAM {params:?}: {status} {text}");
    text
}

fn xml_value<'a>(xml: &'a str, tag: &str) -> &'a str {
    let start = xml.find(&format!("<{tag}>")).unwrap_or_else(|| panic!("no <{tag}> in {xml}")) + tag.len() + 2;
    &xml[start..start + xml[start..].find('<').expect("closing tag")]
}

#[tokio::test(flavor = "multi_thread")]
async fn access_denied_names_the_key_the_arn_and_the_permission_to_grant() {
    let moto = moto::Moto::start();
    let sdk = moto.sdk_config();
    let source_arn = secret(&sdk, GENERIC_SECRET).await;
    let token_arn = secure_parameter(&sdk, OPERATOR_TOKEN).await;

    // From here on moto enforces IAM, after the three calls that make a user who may read SSM
    // parameters and nothing else.
    let reset = reqwest::Client::new().post(format!("{}/moto-api/reset-auth", moto.endpoint)).body("3").send().await;
    assert!(reset.unwrap().status().is_success());
    iam(&moto, &[("Action", "CreateUser"), ("UserName", "ferry-fn")]).await;
    let key = iam(&moto, &[("Action", "CreateAccessKey"), ("UserName", "ferry-fn")]).await;
    let policy =
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ssm:GetParameter","Resource":"*"}]}"#;
    iam(
        &moto,
        &[("Action", "PutUserPolicy"), ("UserName", "ferry-fn"), ("PolicyName", "ssm"), ("PolicyDocument", policy)],
    )
    .await;
    let function = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&moto.endpoint)
        .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(
            aws_sdk_sqs::config::Credentials::new(
                xml_value(&key, "AccessKeyId"),
                xml_value(&key, "SecretAccessKey"),
                None,
                None,
                "iam-user",
            ),
        ))
        .build();

    let mut config = config(&source_arn, &token_arn);
    let error = config.read_secrets_with(&function).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("sources.generic.secret_arn")
            && text.contains(&source_arn)
            && text.contains("grant the function's role secretsmanager:GetSecretValue"),
        "{text}"
    );
    assert_eq!(error.class(), ferry_core::error::ErrorClass::Permanent, "{text}");
}
