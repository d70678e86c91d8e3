variable "name_prefix" {
  description = "Prefix of the function, role, log group, rule and alarm names."
  type        = string
  default     = "ferry"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,39}$", var.name_prefix))
    error_message = "name_prefix: lower-case letters, digits and '-', starting with a letter, at most 40 characters."
  }
}

variable "queue_name" {
  description = "Name of the SQS FIFO job queue."
  type        = string
  default     = "ferry-jobs.fifo"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,75}\\.fifo$", var.queue_name))
    error_message = "queue_name must be a FIFO queue name ending in .fifo (letters, digits, '-', '_')."
  }
}

variable "dead_letter_queue_name" {
  description = "Name of the FIFO dead-letter queue the job queue redrives to."
  type        = string
  default     = "ferry-jobs-dlq.fifo"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,75}\\.fifo$", var.dead_letter_queue_name))
    error_message = "dead_letter_queue_name must be a FIFO queue name ending in .fifo."
  }
}

variable "max_receive_count" {
  description = "Receives of a job before SQS moves it to the dead-letter queue."
  type        = number
  default     = 5

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be between 1 and 1000."
  }
}

variable "table_name" {
  description = "DynamoDB table for the ledger, gates and the webhook replay guard."
  type        = string
  default     = "ferry-ledger"
}

variable "table_deletion_protection" {
  description = "Refuse to delete the ledger table (turn off only for throw-away stacks)."
  type        = bool
  default     = true
}

variable "create_functions" {
  description = "Create the three functions and what serves them. false: only the queue, dead-letter queue, table and dead-letter alarm (no function zips needed)."
  type        = bool
  default     = true
}

variable "webhook_zip" {
  description = "Zip holding the ferry-webhook `bootstrap` (cargo lambda build --release --arm64 --output-format zip)."
  type        = string
  default     = null
}

variable "worker_zip" {
  description = "Zip holding the ferry-worker `bootstrap`."
  type        = string
  default     = null
}

variable "api_zip" {
  description = "Zip holding the ferry-api `bootstrap`."
  type        = string
  default     = null
}

variable "ferry_config" {
  description = "Ferry's TOML configuration (registries, sources, pipelines) without [queue] and [ledger]: the module appends those. Secrets are named by their ARN in the *_arn keys (secret_arn, operator_token_arn, password_arn, ...), never written here."
  type        = string
  default     = ""
}

variable "worker_timeout" {
  description = "Worker function timeout in seconds; the queue's visibility timeout is six times this."
  type        = number
  default     = 300

  validation {
    condition     = var.worker_timeout >= 10 && var.worker_timeout <= 900
    error_message = "worker_timeout must be between 10 and 900 seconds (the Lambda maximum)."
  }
}

variable "worker_batch_size" {
  description = "SQS records per worker invocation (failures are reported per record)."
  type        = number
  default     = 1

  validation {
    condition     = var.worker_batch_size >= 1 && var.worker_batch_size <= 10
    error_message = "worker_batch_size must be between 1 and 10 (the FIFO maximum)."
  }
}

variable "api_url_auth_type" {
  description = "AWS_IAM: operators call the API function's URL with SigV4-signed requests. NONE: browsers reach the web console there and Ferry authenticates every request itself (set identity.session_key_arn)."
  type        = string
  default     = "AWS_IAM"

  validation {
    condition     = contains(["AWS_IAM", "NONE"], var.api_url_auth_type)
    error_message = "api_url_auth_type must be AWS_IAM or NONE."
  }
}

variable "secret_arns" {
  description = "Secrets Manager secret ARNs the config names in its *_arn keys; the functions read all of them at cold start and may read no others."
  type        = list(string)
  default     = []
}

variable "secure_string_parameter_arns" {
  description = "SSM SecureString parameter ARNs the config names in its *_arn keys."
  type        = list(string)
  default     = []
}

variable "ecr_repository_arns" {
  description = "ECR repository ARNs the worker copies from or into (credentials from the role via GetAuthorizationToken)."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  description = "Retention of the functions' CloudWatch log groups."
  type        = number
  default     = 365
}

variable "alarm_actions" {
  description = "ARNs (e.g. an SNS topic) the alarms notify."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
