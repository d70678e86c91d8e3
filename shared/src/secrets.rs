//! Secrets the configuration names by ARN (`<name>_arn` beside `<name>_env`): AWS Secrets
//! Manager secrets (the SecretString is the secret) and SSM SecureString parameters (the
//! decrypted value). They are read once, at start-up, into memory ([`SecretValues`]) and never
//! into the process environment, where child processes and crash reports would see them.

use std::collections::HashMap;

use crate::error::ErrorClass;
use crate::registry::auth::Secret;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{key}: environment variable {var} is not set")]
    EnvNotSet { key: String, var: String },
    #[error("{key}: `{arn}` was not read at start-up (call Config::read_secrets before using the configuration)")]
    NotRead { key: String, arn: String },
    #[error("{key}: cannot read `{arn}`: {message}; {hint}")]
    Aws { key: String, arn: String, class: ErrorClass, message: String, hint: String },
    #[error("{key}: `{arn}` holds an empty secret; put the secret's value in it")]
    Empty { key: String, arn: String },
    #[error(
        "{key}: this build of Ferry has no `aws` feature, so it cannot read `{arn}`; build ferry-core with features = [\"aws\"] or use the `_env` key"
    )]
    NoAwsFeature { key: String, arn: String },
}

impl SecretError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SecretError::Aws { class, .. } => *class,
            _ => ErrorClass::Permanent,
        }
    }
}

/// What a `*_arn` value names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretArn<'a> {
    /// `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>`
    SecretsManager { region: &'a str },
    /// `arn:<partition>:ssm:<region>:<account>:parameter/<name>`
    SsmParameter { region: &'a str },
}

impl<'a> SecretArn<'a> {
    /// Parses `arn`, or says what a valid one looks like.
    pub fn parse(arn: &'a str) -> Result<Self, String> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let wrong = || {
            format!(
                "`{arn}` is not a Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>) nor an SSM parameter ARN (arn:aws:ssm:<region>:<account>:parameter/<name>)"
            )
        };
        let [scheme, partition, service, region, account, resource] = parts[..] else { return Err(wrong()) };
        if scheme != "arn" || partition.is_empty() || region.is_empty() || account.is_empty() {
            return Err(wrong());
        }
        match service {
            "secretsmanager" if resource.strip_prefix("secret:").is_some_and(|n| !n.is_empty()) => {
                Ok(SecretArn::SecretsManager { region })
            }
            "ssm" if resource.strip_prefix("parameter/").is_some_and(|n| !n.is_empty()) => {
                Ok(SecretArn::SsmParameter { region })
            }
            _ => Err(wrong()),
        }
    }
}

/// The values of the configuration's secret ARNs, by ARN, as read at start-up.
#[derive(Debug, Default)]
pub struct SecretValues(HashMap<String, Secret>);

impl SecretValues {
    pub fn get(&self, arn: &str) -> Option<&Secret> {
        self.0.get(arn)
    }

    pub fn insert(&mut self, arn: String, value: Secret) {
        self.0.insert(arn, value);
    }
}

/// One secret of the configuration: from an environment variable or an ARN read at start-up.
/// `key` is the configuration key without its `_env`/`_arn` suffix (`server.operator_token`).
pub fn resolve(
    values: &SecretValues,
    key: &str,
    env: Option<&String>,
    arn: Option<&String>,
) -> Result<Option<Secret>, SecretError> {
    if let Some(var) = env {
        return std::env::var(var)
            .map(|v| Some(Secret::new(v)))
            .map_err(|_| SecretError::EnvNotSet { key: format!("{key}_env"), var: var.clone() });
    }
    match arn {
        Some(arn) => values
            .get(arn)
            .cloned()
            .map(Some)
            .ok_or_else(|| SecretError::NotRead { key: format!("{key}_arn"), arn: arn.clone() }),
        None => Ok(None),
    }
}

#[cfg(feature = "aws")]
pub(crate) use self::aws::describe;
#[cfg(feature = "aws")]
pub use self::aws::read;

#[cfg(feature = "aws")]
mod aws {
    use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

    use super::{SecretArn, SecretError};
    use crate::error::ErrorClass;
    use crate::registry::auth::Secret;

    /// Reads one secret ARN with `sdk`'s credentials, in the ARN's region.
    pub async fn read(sdk: &aws_config::SdkConfig, key: &str, arn: &str) -> Result<Secret, SecretError> {
        let kind = SecretArn::parse(arn).map_err(|message| SecretError::Aws {
            key: key.into(),
            arn: arn.into(),
            class: ErrorClass::Permanent,
            message,
            hint: "fix the ARN".into(),
        })?;
        let failed = |code: Option<&str>, message: String, grant: &str| {
            // A 403 whose body the SDK could not read is still a refusal.
            let code = code.or(message.starts_with("HTTP 403").then_some("AccessDenied"));
            let (class, hint) = match code {
                Some("AccessDeniedException" | "AccessDenied") => (
                    ErrorClass::Permanent,
                    format!("grant the function's role {grant} on this ARN (and kms:Decrypt on its key)"),
                ),
                Some(
                    "UnrecognizedClientException"
                    | "InvalidClientTokenId"
                    | "InvalidSignatureException"
                    | "ExpiredTokenException",
                ) => (
                    ErrorClass::Permanent,
                    "AWS refused the credentials: check the credential chain (role, AWS_* variables, profile)".into(),
                ),
                Some("ResourceNotFoundException" | "ParameterNotFound") => {
                    (ErrorClass::Permanent, "check the ARN: no such secret in that account and region".into())
                }
                Some("DecryptionFailure" | "InvalidKeyId") => {
                    (ErrorClass::Permanent, "the KMS key cannot decrypt it: grant kms:Decrypt on the key".into())
                }
                _ => (ErrorClass::Transient, "try again; check the network path to the AWS endpoint".into()),
            };
            SecretError::Aws { key: key.into(), arn: arn.into(), class, message, hint }
        };
        let value = match kind {
            SecretArn::SecretsManager { region } => {
                let conf = aws_sdk_secretsmanager::config::Builder::from(sdk)
                    .region(aws_sdk_secretsmanager::config::Region::new(region.to_string()))
                    .build();
                let out = aws_sdk_secretsmanager::Client::from_conf(conf)
                    .get_secret_value()
                    .secret_id(arn)
                    .send()
                    .await
                    .map_err(|e| failed(e.code(), describe(&e), "secretsmanager:GetSecretValue"))?;
                match out.secret_string {
                    Some(text) => text,
                    None => {
                        return Err(failed(
                            Some("AccessDeniedException"),
                            "the secret has no SecretString (a binary secret)".into(),
                            "secretsmanager:GetSecretValue",
                        )
                        .with_hint("store the secret as a string (SecretString)"));
                    }
                }
            }
            SecretArn::SsmParameter { region } => {
                let conf = aws_sdk_ssm::config::Builder::from(sdk)
                    .region(aws_sdk_ssm::config::Region::new(region.to_string()))
                    .build();
                // GetParameter takes the ARN as the name; with_decryption opens a SecureString.
                let out = aws_sdk_ssm::Client::from_conf(conf)
                    .get_parameter()
                    .name(arn)
                    .with_decryption(true)
                    .send()
                    .await
                    .map_err(|e| failed(e.code(), describe(&e), "ssm:GetParameter"))?;
                let Some(parameter) = out.parameter else {
                    return Err(SecretError::Empty { key: key.into(), arn: arn.into() });
                };
                if parameter.r#type != Some(aws_sdk_ssm::types::ParameterType::SecureString) {
                    tracing::warn!("{key}: {arn} is not a SecureString parameter: its value is stored unencrypted");
                }
                parameter.value.unwrap_or_default()
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty { key: key.into(), arn: arn.into() });
        }
        Ok(Secret::new(value))
    }

    /// What an AWS call's failure says, in one line: the service's code and message, or the
    /// HTTP status and the start of a body the SDK could not read, or why no answer came.
    pub(crate) fn describe<E>(error: &SdkError<E>) -> String
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        if let Some(code) = error.code() {
            return format!("{code}: {}", error.message().unwrap_or("(no message)"));
        }
        match error.raw_response() {
            Some(response) => {
                let body = response.body().bytes().map(String::from_utf8_lossy).unwrap_or_default();
                let body: String = body.chars().map(|c| if c.is_control() { ' ' } else { c }).take(300).collect();
                format!("HTTP {}: {}", response.status().as_u16(), body.trim())
            }
            None => DisplayErrorContext(error).to_string(),
        }
    }

    impl SecretError {
        fn with_hint(mut self, new: &str) -> Self {
            if let SecretError::Aws { hint, .. } = &mut self {
                *hint = new.into();
            }
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_of_both_services_parse_and_others_are_refused() {
        assert_eq!(
            SecretArn::parse("arn:aws:secretsmanager:eu-west-1:123456789012:secret:ferry/generic-AbCdEf"),
            Ok(SecretArn::SecretsManager { region: "eu-west-1" })
        );
        assert_eq!(
            SecretArn::parse("arn:aws:ssm:us-east-2:123456789012:parameter/ferry/token"),
            Ok(SecretArn::SsmParameter { region: "us-east-2" })
        );
        for bad in [
            "ferry/generic",
            "arn:aws:s3:::bucket",
            "arn:aws:ssm:us-east-2:123456789012:document/x",
            "arn:aws:secretsmanager::123456789012:secret:x",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:",
        ] {
            assert!(SecretArn::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn an_arn_not_read_at_start_up_is_an_error_naming_key_and_arn() {
        let arn = "arn:aws:secretsmanager:eu-west-1:1:secret:x".to_string();
        let err = resolve(&SecretValues::default(), "server.operator_token", None, Some(&arn)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("server.operator_token_arn") && text.contains(&arn), "{text}");
        let mut values = SecretValues::default();
        values.insert(arn.clone(), Secret::new("s3cret"));
        let got = resolve(&values, "server.operator_token", None, Some(&arn)).unwrap().unwrap();
        assert_eq!(got.expose(), "s3cret");
    }
}
