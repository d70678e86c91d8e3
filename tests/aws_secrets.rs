//! `ferry serve` with its secrets in Secrets Manager and SSM and an ECR-style target registry,
//! all through the standard AWS configuration (`AWS_ENDPOINT_URL` pointing at `moto_server`):
//! the generic sender's secret and the operator token come from ARNs, and the target registry's
//! password is the one moto's `GetAuthorizationToken` hands out (`ecr = true`).

#[allow(dead_code)]
#[path = "../shared/tests/conformance/moto.rs"]
mod moto;
mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::registry::free_port;
use support::{FerryServer, OciLayout, Registry};

const GENERIC_SECRET: &str = "aws-secrets-e2e-generic-secret";
const OPERATOR_TOKEN: &str = "aws-secrets-e2e-operator-token";
/// What moto's `GetAuthorizationToken` gives its default account: `AWS:<account>-auth-token`.
const ECR_PASSWORD: &str = "123456789012-auth-token";
const REPO: &str = "shop/api";
const SESSION_KEY: &str = "aws-secrets-e2e-console-session-key-0123456789";
/// `sam`'s personal token: he signs in to the console to show the session key came from its ARN.
const SAM_TOKEN: &str = "aws-secrets-e2e-sam-token-0123456789abcdef";

#[test]
fn serve_reads_arn_secrets_at_start_and_promotes_into_an_ecr_registry_with_its_token() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let moto = moto::Moto::start();
    let sdk = moto.sdk_config();
    let (secret_arn, token_arn) = runtime.block_on(async {
        let secret = aws_sdk_secretsmanager::Client::new(&sdk)
            .create_secret()
            .name("ferry/generic")
            .secret_string(GENERIC_SECRET)
            .send()
            .await
            .expect("create the secret");
        aws_sdk_ssm::Client::new(&sdk)
            .put_parameter()
            .name("/ferry/operator-token")
            .value(OPERATOR_TOKEN)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .expect("put the parameter");
        (secret.arn().unwrap().to_string(), "arn:aws:ssm:us-east-1:123456789012:parameter/ferry/operator-token")
    });
    let session_key_arn = runtime.block_on(async {
        let secret = aws_sdk_secretsmanager::Client::new(&sdk)
            .create_secret()
            .name("ferry/session-key")
            .secret_string(SESSION_KEY)
            .send()
            .await
            .expect("create the session key");
        secret.arn().unwrap().to_string()
    });
    let sam_hash = support::ferry("token").arg("hash").stdin(SAM_TOKEN).run().success().trim().to_string();

    let build = Registry::plain();
    let ecr = Registry::with_htpasswd("AWS", ECR_PASSWORD);
    let mut layout = OciLayout::new();
    let image = layout.add_image("1.0", &[4096, 1024]);
    build.skopeo_push(&layout.reference("1.0"), &format!("{REPO}:1.0"), &[]);

    let config = format!(
        r#"
[registries."{build}"]
plain_http = true
[registries."{ecr}"]
plain_http = true
ecr = true

[sources.generic]
secret_arn = "{secret_arn}"

[identity]
session_key_arn = "{session_key_arn}"
[[identity.users]]
name = "sam"
token_hash = "{sam_hash}"

[[pipelines]]
name = "shop-api"
source = "{build}/{REPO}"
  [[pipelines.stages]]
  name = "dev"
  target = "{ecr}/{REPO}"
"#,
        build = build.host(),
        ecr = ecr.host(),
    );
    let envs = moto.aws_env();
    let env_refs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = FerryServer::start_with_server_keys(
        free_port(),
        &format!("operator_token_arn = \"{token_arn}\""),
        &config,
        &env_refs,
        None,
    );

    let (status, _) =
        server.post_generic(GENERIC_SECRET, &json!({ "repository": format!("{}/{REPO}", build.host()), "tag": "1.0" }));
    let api_status = runtime.block_on(async {
        let api =
            reqwest::Client::new().get(server.url("/api/status")).bearer_auth(OPERATOR_TOKEN).send().await.unwrap();
        api.status().as_u16()
    });
    assert_eq!(status, 202, "signed with the Secrets Manager secret\n{}", server.log());
    assert_eq!(api_status, 200, "the operator token from the SSM parameter opens /api\n{}", server.log());

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if ecr.client().manifest(REPO, "1.0").is_some_and(|m| m.digest == image.digest()) {
            break;
        }
        assert!(Instant::now() < deadline, "not promoted into the ECR registry within 60 s:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // sam signs in to the console: his session is sealed with the key from Secrets Manager.
    let session = runtime.block_on(async {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let login = http.get(server.url("/login")).send().await.unwrap();
        let form_cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
        let form_token = form_cookie.trim_start_matches("ferry_login=").to_string();
        let signed_in = http
            .post(server.url("/login/token"))
            .header("cookie", &form_cookie)
            .form(&[("token", SAM_TOKEN), ("csrf", &form_token), ("next", "/")])
            .send()
            .await
            .unwrap();
        assert_eq!(signed_in.status(), 303, "{}", server.log());
        let cookies: Vec<String> =
            signed_in.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        let session = cookies.iter().find(|c| c.starts_with("ferry_session=")).expect("a session cookie").clone();
        session.split(';').next().unwrap().trim_start_matches("ferry_session=").to_string()
    });
    let sealed_with = |key: &str| {
        ferry_core::console::session::Sessions::new(Some(key.as_bytes()), 60)
            .open::<ferry_core::console::session::Session>("session", &session)
            .map(|s| s.sub)
    };
    assert_eq!(sealed_with(SESSION_KEY).as_deref(), Some("sam"), "sealed with identity.session_key_arn's value");
    assert_eq!(sealed_with("another-key-of-thirty-two-characters-or-more"), None);

    for secret in [GENERIC_SECRET, OPERATOR_TOKEN, ECR_PASSWORD, SESSION_KEY] {
        assert!(!server.log().contains(secret), "the log shows a secret");
    }
}

#[test]
fn a_secret_arn_that_cannot_be_read_stops_serve_and_is_named_by_config_check() {
    let moto = moto::Moto::start();
    let missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ferry/missing-AbCdEf";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
data_dir = {data:?}
[registries."127.0.0.1:5001"]
[sources.generic]
secret_arn = "{missing}"
"#,
            data = dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let with_aws = |command: support::FerryCommand| {
        moto.aws_env().into_iter().fold(command.timeout(Duration::from_secs(60)), |c, (k, v)| c.env(k, v))
    };

    let serve = with_aws(support::ferry("serve").arg("--config").arg(&path).args(["--listen", "127.0.0.1:0"])).run();
    let error = serve.failure();
    assert!(
        error.contains("sources.generic.secret_arn") && error.contains(missing) && error.contains("check the ARN"),
        "{error}"
    );

    let check = with_aws(support::ferry("config").arg("check").arg(&path)).run();
    check.success();
    assert!(
        check.stderr.contains("warning: sources.generic.secret_arn") && check.stderr.contains(missing),
        "{}",
        check.stderr
    );
}

#[test]
fn the_webhook_function_reads_its_secret_arn_at_cold_start_and_verifies_with_it() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let moto = moto::Moto::start();
    let sdk = moto.sdk_config();
    let (secret_arn, queue_url, table) = runtime.block_on(async {
        let secret = aws_sdk_secretsmanager::Client::new(&sdk)
            .create_secret()
            .name("ferry/generic")
            .secret_string(GENERIC_SECRET)
            .send()
            .await
            .expect("create the secret");
        (secret.arn().unwrap().to_string(), moto.fifo_queue_with_dlq(5).await, moto.ledger_table().await)
    });
    let config = format!(
        r#"
[queue]
kind = "sqs"
url = "{queue_url}"
[ledger]
kind = "dynamodb"
table = "{table}"
[registries."build.example:5000"]
[registries."dev.example:5000"]
[sources.generic]
secret_arn = "{secret_arn}"
[[pipelines]]
name = "shop-api"
source = "build.example:5000/{REPO}"
  [[pipelines.stages]]
  name = "dev"
  target = "dev.example:5000/{REPO}"
"#
    );
    let mut envs = moto.aws_env();
    envs.push(("FERRY_CONFIG", config));
    let mut lambda = support::lambda::LambdaRuntime::start();
    lambda.run_function(&support::lambda::function_binary("ferry-webhook"), "ferry-webhook", &envs);

    let event = |secret: &str| {
        let body = json!({ "repository": format!("build.example:5000/{REPO}"), "tag": "1.0",
                           "digest": format!("sha256:{}", "cd".repeat(32)) })
        .to_string();
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
        let signature = ferry_core::intake::verify::generic_signature(secret.as_bytes(), &timestamp, body.as_bytes());
        // A Function URL event (payload format 2.0).
        json!({
            "version": "2.0", "routeKey": "$default", "rawPath": "/hooks/generic", "rawQueryString": "",
            "headers": { "content-type": "application/json", "x-ferry-timestamp": timestamp, "x-ferry-signature": signature },
            "requestContext": {
                "accountId": "anonymous", "apiId": "ferry", "domainName": "ferry.lambda-url.us-east-1.on.aws",
                "domainPrefix": "ferry", "requestId": "r", "routeKey": "$default", "stage": "$default",
                "time": "01/Jan/2026:00:00:00 +0000", "timeEpoch": 0,
                "http": { "method": "POST", "path": "/hooks/generic", "protocol": "HTTP/1.1",
                          "sourceIp": "127.0.0.1", "userAgent": "test" }
            },
            "body": body, "isBase64Encoded": false
        })
    };
    let forged = lambda.invoke(&event("not-the-secret"), Duration::from_secs(60)).response();
    assert_eq!(forged["statusCode"], 401, "{forged:#}\n{}", lambda.log());
    let accepted = lambda.invoke(&event(GENERIC_SECRET), Duration::from_secs(60)).response();
    assert_eq!(accepted["statusCode"], 202, "{accepted:#}\n{}", lambda.log());
    assert!(!lambda.log().contains(GENERIC_SECRET), "the function logged its secret");
}
