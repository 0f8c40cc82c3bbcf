output "keep_service_url" {
  description = "The Keep service URL (Lambda Function URL, response streaming)."
  value       = aws_lambda_function_url.http.function_url
}

output "keep_service_host" {
  description = "service_host for `arv keep_service create` (port 443, service_ssl_flag true)."
  value       = trimsuffix(trimprefix(aws_lambda_function_url.http.function_url, "https://"), "/")
}

output "bucket" {
  description = "The S3 bucket holding the Keep blocks."
  value       = local.bucket_name
}

output "http_function" {
  value = aws_lambda_function.http.function_name
}

output "sweep_function" {
  value = aws_lambda_function.sweep.function_name
}

output "secret_parameters" {
  description = "SSM parameter names of the signing key and tokens (rotate with aws ssm put-parameter --overwrite)."
  value = [
    aws_ssm_parameter.blob_signing_key.name,
    aws_ssm_parameter.system_root_token.name,
    aws_ssm_parameter.management_token.name,
  ]
}

output "container_host_url" {
  description = "HTTPS URL of the optional container host (empty unless enable_container_host); point a DNS name matching the certificate at it."
  value       = var.enable_container_host ? "https://${aws_lb.keepstore[0].dns_name}" : ""
}

output "container_image_repository" {
  description = "ECR repository to push artifacts/keepfn-server to (empty unless enable_container_host)."
  value       = var.enable_container_host ? aws_ecr_repository.keepstore[0].repository_url : ""
}
