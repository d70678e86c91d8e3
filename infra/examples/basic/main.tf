# A root module using the ferry module. Against AWS: set the function zips and ferry_config.
# Against a local AWS endpoint (moto, LocalStack): set aws_endpoint_url, and
# create_functions = false to apply only the queue, dead-letter queue and table.

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40"
    }
  }
}

locals {
  local_endpoint = var.aws_endpoint_url != null
}

provider "aws" {
  region = var.region

  # A local endpoint has no real account, instance metadata or credentials to check.
  skip_credentials_validation = local.local_endpoint
  skip_requesting_account_id  = local.local_endpoint
  skip_metadata_api_check     = local.local_endpoint

  dynamic "endpoints" {
    for_each = local.local_endpoint ? [var.aws_endpoint_url] : []
    content {
      cloudwatch     = endpoints.value
      cloudwatchlogs = endpoints.value
      dynamodb       = endpoints.value
      events         = endpoints.value
      iam            = endpoints.value
      lambda         = endpoints.value
      sqs            = endpoints.value
      sts            = endpoints.value
    }
  }
}

module "ferry" {
  source = "../.."

  name_prefix               = var.name_prefix
  queue_name                = var.queue_name
  dead_letter_queue_name    = var.dead_letter_queue_name
  max_receive_count         = var.max_receive_count
  table_name                = var.table_name
  table_deletion_protection = var.table_deletion_protection

  create_functions = var.create_functions
  webhook_zip      = var.webhook_zip
  worker_zip       = var.worker_zip
  api_zip          = var.api_zip
  ferry_config     = var.ferry_config
  secret_arns      = var.secret_arns
}
