variable "region" {
  type    = string
  default = "us-east-1"
}

variable "aws_endpoint_url" {
  description = "One endpoint for every AWS service (e.g. http://127.0.0.1:5000 for moto_server); null for AWS itself."
  type        = string
  default     = null
}

variable "create_functions" {
  description = "false: only the queue, dead-letter queue, table and dead-letter alarm (no function zips needed)."
  type        = bool
  default     = true
}

variable "name_prefix" {
  type    = string
  default = "ferry"
}

variable "queue_name" {
  type    = string
  default = "ferry-jobs.fifo"
}

variable "dead_letter_queue_name" {
  type    = string
  default = "ferry-jobs-dlq.fifo"
}

variable "max_receive_count" {
  type    = number
  default = 5
}

variable "table_name" {
  type    = string
  default = "ferry-ledger"
}

variable "table_deletion_protection" {
  type    = bool
  default = true
}

variable "webhook_zip" {
  type    = string
  default = null
}

variable "worker_zip" {
  type    = string
  default = null
}

variable "api_zip" {
  type    = string
  default = null
}

variable "ferry_config" {
  description = "Ferry's TOML without [queue] and [ledger], e.g. file(\"ferry.toml\")."
  type        = string
  default     = ""
}

variable "secret_arns" {
  type    = list(string)
  default = []
}
