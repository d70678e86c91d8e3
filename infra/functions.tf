# The three Lambda functions (arm64, provided.al2023, `bootstrap` from cargo lambda), one
# least-privilege role each, the webhook and API Function URLs, the one-minute sweep schedule
# and an error alarm per function. Nothing here exists when create_functions = false.

locals {
  # The operator's config plus the stores this module made; no secret is in it.
  ferry_config = <<-TOML
    ${var.ferry_config}

    # Appended by the ferry terraform module: the queue and table of this stack.
    [queue]
    kind = "sqs"
    url = "${aws_sqs_queue.jobs.url}"

    [ledger]
    kind = "dynamodb"
    table = "${aws_dynamodb_table.ledger.name}"
  TOML

  functions = var.create_functions ? {
    webhook = { zip = var.webhook_zip, timeout = 30, memory = 512, policy = data.aws_iam_policy_document.webhook.json }
    worker  = { zip = var.worker_zip, timeout = var.worker_timeout, memory = 1024, policy = data.aws_iam_policy_document.worker.json }
    api     = { zip = var.api_zip, timeout = 60, memory = 512, policy = data.aws_iam_policy_document.api.json }
  } : {}

  queues = [aws_sqs_queue.jobs.arn, aws_sqs_queue.dead_letter.arn]

  table_crud = [
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:Query",
    "dynamodb:ConditionCheckItem",
    "dynamodb:TransactWriteItems",
  ]
}

data "aws_iam_policy_document" "assume_lambda" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

# Secrets named by the config's *_arn keys: every function reads all of them at cold start
# (one config for all three), so each role may read each listed ARN.
data "aws_iam_policy_document" "secrets" {
  dynamic "statement" {
    for_each = length(var.secret_arns) > 0 ? [1] : []
    content {
      actions   = ["secretsmanager:GetSecretValue"]
      resources = var.secret_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.secure_string_parameter_arns) > 0 ? [1] : []
    content {
      actions   = ["ssm:GetParameter"]
      resources = var.secure_string_parameter_arns
    }
  }
}

data "aws_iam_policy_document" "webhook" {
  source_policy_documents = [data.aws_iam_policy_document.secrets.json]

  # Queue a promotion (FIFO: group id and dedup id set by Ferry).
  statement {
    actions   = ["sqs:SendMessage", "sqs:GetQueueAttributes"]
    resources = [aws_sqs_queue.jobs.arn]
  }

  # The replay guard: a conditional put with a TTL, shared by every instance.
  statement {
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.ledger.arn]
  }
}

data "aws_iam_policy_document" "worker" {
  source_policy_documents = [data.aws_iam_policy_document.secrets.json]

  # Receive (the event source), settle, renew leases, enqueue the next stage, dead-letter.
  statement {
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:SendMessage",
      "sqs:GetQueueAttributes",
    ]
    resources = local.queues
  }

  statement {
    actions   = local.table_crud
    resources = [aws_dynamodb_table.ledger.arn]
  }

  dynamic "statement" {
    for_each = length(var.ecr_repository_arns) > 0 ? [1] : []
    content {
      # GetAuthorizationToken has no resource-level permissions: "*" is the only form.
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"]
    }
  }

  dynamic "statement" {
    for_each = length(var.ecr_repository_arns) > 0 ? [1] : []
    content {
      actions = [
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "ecr:InitiateLayerUpload",
        "ecr:UploadLayerPart",
        "ecr:CompleteLayerUpload",
        "ecr:PutImage",
      ]
      resources = var.ecr_repository_arns
    }
  }
}

data "aws_iam_policy_document" "api" {
  source_policy_documents = [data.aws_iam_policy_document.secrets.json]

  # promote/approve/rollback enqueue; `dlq list` reads and `dlq redrive` moves jobs from the
  # DLQ (found through the queue's redrive policy).
  statement {
    actions = [
      "sqs:SendMessage",
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
    ]
    resources = local.queues
  }

  statement {
    actions   = local.table_crud
    resources = [aws_dynamodb_table.ledger.arn]
  }
}

resource "aws_cloudwatch_log_group" "function" {
  for_each          = local.functions
  name              = "/aws/lambda/${var.name_prefix}-${each.key}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_iam_role" "function" {
  for_each           = local.functions
  name               = "${var.name_prefix}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume_lambda.json
  tags               = var.tags
}

data "aws_iam_policy_document" "logs" {
  for_each = local.functions
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function[each.key].arn}:*"]
  }
}

resource "aws_iam_role_policy" "logs" {
  for_each = local.functions
  name     = "logs"
  role     = aws_iam_role.function[each.key].id
  policy   = data.aws_iam_policy_document.logs[each.key].json
}

resource "aws_iam_role_policy" "function" {
  for_each = local.functions
  name     = each.key
  role     = aws_iam_role.function[each.key].id
  policy   = each.value.policy
}

resource "aws_lambda_function" "function" {
  for_each         = local.functions
  function_name    = "${var.name_prefix}-${each.key}"
  role             = aws_iam_role.function[each.key].arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = ["arm64"]
  filename         = each.value.zip
  source_code_hash = each.value.zip == null ? null : filebase64sha256(each.value.zip)
  timeout          = each.value.timeout
  memory_size      = each.value.memory
  tags             = var.tags

  environment {
    variables = {
      FERRY_CONFIG = local.ferry_config
      RUST_LOG     = "info"
    }
  }

  depends_on = [aws_iam_role_policy.logs, aws_cloudwatch_log_group.function]

  lifecycle {
    precondition {
      condition     = each.value.zip != null
      error_message = "create_functions is true but ${each.key}_zip is not set: build with `cargo lambda build --release --arm64 --output-format zip` and pass target/lambda/ferry-${each.key}/bootstrap.zip, or set create_functions = false."
    }
  }
}

# Registry webhooks cannot sign AWS requests: Ferry authenticates every sender itself on the
# raw body (HMAC, secret header, basic auth or URL token) and answers 401 otherwise.
resource "aws_lambda_function_url" "webhook" {
  count              = var.create_functions ? 1 : 0
  function_name      = aws_lambda_function.function["webhook"].function_name
  authorization_type = "NONE"
}

# hashicorp/aws 5.x has no `invoked_via_function_url`, so the second grant AWS now asks for on
# public URLs (lambda:InvokeFunction limited to URL calls) is not expressible here; template.yaml
# has it.
resource "aws_lambda_permission" "webhook_url" {
  count                  = var.create_functions ? 1 : 0
  statement_id           = "AllowPublicFunctionUrl"
  action                 = "lambda:InvokeFunctionUrl"
  function_name          = aws_lambda_function.function["webhook"].function_name
  principal              = "*"
  function_url_auth_type = "NONE"
}

# With AWS_IAM, operators call it with SigV4-signed requests (their IAM policy needs
# lambda:InvokeFunctionUrl); with NONE it also serves the web console to browsers, and Ferry
# authenticates every request itself.
resource "aws_lambda_function_url" "api" {
  count              = var.create_functions ? 1 : 0
  function_name      = aws_lambda_function.function["api"].function_name
  authorization_type = var.api_url_auth_type # checkov:skip=CKV_AWS_258:AWS_IAM by default; NONE serves the web console, whose every request Ferry authenticates itself
}

resource "aws_lambda_permission" "api_url" {
  count                  = var.create_functions && var.api_url_auth_type == "NONE" ? 1 : 0
  statement_id           = "AllowPublicFunctionUrl"
  action                 = "lambda:InvokeFunctionUrl"
  function_name          = aws_lambda_function.function["api"].function_name
  principal              = "*"
  function_url_auth_type = "NONE"
}

resource "aws_lambda_event_source_mapping" "worker" {
  count                   = var.create_functions ? 1 : 0
  event_source_arn        = aws_sqs_queue.jobs.arn
  function_name           = aws_lambda_function.function["worker"].arn
  batch_size              = var.worker_batch_size
  function_response_types = ["ReportBatchItemFailures"]

  scaling_config {
    maximum_concurrency = 10
  }
}

resource "aws_cloudwatch_event_rule" "sweep" {
  count               = var.create_functions ? 1 : 0
  name                = "${var.name_prefix}-sweep"
  description         = "Opens Ferry gates that open with time (soak, approval expiry)."
  schedule_expression = "rate(1 minute)"
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "sweep" {
  count = var.create_functions ? 1 : 0
  rule  = aws_cloudwatch_event_rule.sweep[0].name
  arn   = aws_lambda_function.function["api"].arn
}

resource "aws_lambda_permission" "sweep" {
  count         = var.create_functions ? 1 : 0
  statement_id  = "AllowSweepSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.function["api"].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.sweep[0].arn
}

resource "aws_cloudwatch_metric_alarm" "function_errors" {
  for_each            = local.functions
  alarm_name          = "${var.name_prefix}-${each.key}-errors"
  alarm_description   = "The Ferry ${each.key} function failed (per-job failures end in the dead-letter alarm)."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = aws_lambda_function.function[each.key].function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  tags                = var.tags
}
