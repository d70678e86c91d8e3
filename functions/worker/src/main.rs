//! `ferry-worker`: Ferry's promotion worker on AWS Lambda. Each SQS record of a batch goes
//! through `Worker::handle` — the code `ferry serve`'s worker runs — and the records that stay
//! queued are reported as `batchItemFailures`.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use ferry_core::lambda;
use ferry_core::worker::Worker;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda::Error> {
    lambda::init_tracing();
    let (config, stores) = lambda::start().await?;
    let queue = lambda::sqs_queue(&stores)?;
    let worker = Arc::new(Worker::new(config, stores.queue, stores.ledger)?);
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let (worker, queue) = (worker.clone(), queue.clone());
        async move {
            let deadline = event.context.deadline;
            Ok::<SqsBatchResponse, lambda::Error>(lambda::sqs_batch(&worker, &queue, event.payload, deadline).await)
        }
    }))
    .await
}
