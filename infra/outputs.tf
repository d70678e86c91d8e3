output "queue_url" {
  description = "URL of the FIFO job queue (`[queue] url` in Ferry's config)."
  value       = aws_sqs_queue.jobs.url
}

output "queue_arn" {
  value = aws_sqs_queue.jobs.arn
}

output "dead_letter_queue_url" {
  value = aws_sqs_queue.dead_letter.url
}

output "dead_letter_queue_arn" {
  value = aws_sqs_queue.dead_letter.arn
}

output "table_name" {
  description = "The DynamoDB table (`[ledger] table` in Ferry's config)."
  value       = aws_dynamodb_table.ledger.name
}

output "table_arn" {
  value = aws_dynamodb_table.ledger.arn
}

output "webhook_url" {
  description = "Base URL of the webhook function; senders post to <url>hooks/<sender>. null without functions."
  value       = var.create_functions ? aws_lambda_function_url.webhook[0].function_url : null
}

output "api_url" {
  description = "Operations API URL (AWS_IAM auth: requests must be SigV4-signed). null without functions."
  value       = var.create_functions ? aws_lambda_function_url.api[0].function_url : null
}

output "ferry_config" {
  description = "The configuration the functions run with (FERRY_CONFIG)."
  value       = local.ferry_config
}
