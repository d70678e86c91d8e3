output "queue_url" {
  value = module.ferry.queue_url
}

output "dead_letter_queue_url" {
  value = module.ferry.dead_letter_queue_url
}

output "dead_letter_queue_arn" {
  value = module.ferry.dead_letter_queue_arn
}

output "table_name" {
  value = module.ferry.table_name
}

output "webhook_url" {
  value = module.ferry.webhook_url
}

output "api_url" {
  value = module.ferry.api_url
}
