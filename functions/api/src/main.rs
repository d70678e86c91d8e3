//! `ferry-api`: Ferry's operations API on AWS Lambda (status, promote, approve, reject, rollback,
//! history, dlq — the `/api/*` routes of `ferry serve`), and the periodic sweep that opens gates
//! with time (soak, approval expiry), run by an EventBridge schedule's `Scheduled Event`.

use std::sync::Arc;

use ferry_core::lambda::{self, ScheduledEvent};
use ferry_core::ops::Operations;
use ferry_core::worker::Worker;
use lambda_http::request::LambdaRequest;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};
use tower::Service;

#[tokio::main]
async fn main() -> Result<(), lambda::Error> {
    lambda::init_tracing();
    let (config, stores) = lambda::start().await?;
    let worker = Arc::new(Worker::new(config.clone(), stores.queue, stores.ledger)?);
    // The same operations API and web console as `ferry serve`, `[identity]` included.
    let ops = Arc::new(Operations::new(worker.clone()));
    let api = ferry_core::api::operations_app(&config, ops)?.ok_or(
        "set server.operator_token_env (or _arn) or configure [identity]: the API function serves /api/* and the console only then",
    )?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        let (worker, api) = (worker.clone(), api.clone());
        async move {
            if ScheduledEvent::from_event(&event.payload).is_some() {
                worker.sweep().await?;
                return Ok::<Value, lambda::Error>(json!({ "swept": true }));
            }
            let request: LambdaRequest = serde_json::from_value(event.payload)?;
            let mut adapter = lambda_http::Adapter::from(api);
            let response = adapter.call(LambdaEvent::new(request, event.context)).await?;
            Ok(serde_json::to_value(response)?)
        }
    }))
    .await
}
