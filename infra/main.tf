# Ferry's AWS stores: the FIFO job queue with its dead-letter queue, the DynamoDB table, and the
# dead-letter alarm. These need no function zips (create_functions = false applies them alone).

resource "aws_sqs_queue" "dead_letter" {
  name                        = var.dead_letter_queue_name
  fifo_queue                  = true
  content_based_deduplication = false
  message_retention_seconds   = 1209600
  sqs_managed_sse_enabled     = true
  tags                        = var.tags
}

resource "aws_sqs_queue" "jobs" {
  name       = var.queue_name
  fifo_queue = true
  # Ferry sets MessageDeduplicationId itself (a hash of the job's dedup key).
  content_based_deduplication = false
  # AWS guidance for Lambda event sources: at least six times the function timeout.
  visibility_timeout_seconds = 6 * var.worker_timeout
  message_retention_seconds  = 1209600
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letter.arn
    maxReceiveCount     = var.max_receive_count
  })
  tags = var.tags
}

resource "aws_dynamodb_table" "ledger" {
  name                        = var.table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  range_key                   = "sk"
  deletion_protection_enabled = var.table_deletion_protection

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "dead_letters" {
  alarm_name          = "${var.name_prefix}-dead-letters"
  alarm_description   = "A Ferry job was dead-lettered: `ferry dlq list` shows why, `ferry dlq redrive JOB_ID` retries it."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dead_letter.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  tags                = var.tags
}
