//! `ferry-webhook`: Ferry's webhook intake on AWS Lambda. The Router `ferry serve` serves,
//! under `lambda_http` (Function URL and API Gateway HTTP API events), queueing into SQS.

use std::sync::Arc;

use ferry_core::lambda;

#[tokio::main]
async fn main() -> Result<(), lambda::Error> {
    lambda::init_tracing();
    let (config, stores) = lambda::start().await?;
    let intake = lambda::intake(&config, &stores)?;
    lambda_http::run(ferry_core::http::router(Arc::new(intake))).await
}
