variable "region" {
  description = "AWS region for every resource."
  type        = string
}

variable "name" {
  description = "Name prefix for the functions, role, schedule, parameters and log groups."
  type        = string
  default     = "keepfn"

  validation {
    # 22 keeps "<name>-keepstore" within the 32-character limit of load balancer and target group names.
    condition     = can(regex("^[a-z][a-z0-9-]{1,21}$", var.name))
    error_message = "Use 2-22 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "cluster_id" {
  description = "Arvados cluster id (five characters)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]{5}$", var.cluster_id))
    error_message = "The cluster id is five lowercase letters or digits."
  }
}

variable "bucket_name" {
  description = "Name of the S3 bucket to create for Keep blocks (globally unique). Ignored when existing_bucket_name is set."
  type        = string
  default     = null
}

variable "existing_bucket_name" {
  description = "Use this existing bucket (e.g. one written by the reference keepstore) instead of creating one. Its public-access, TLS and encryption settings stay yours to manage."
  type        = string
  default     = ""
}

variable "s3_prefix_length" {
  description = "Like -s3-prefix-length: blocks are stored under <hash[:N]>/<hash>; 0 = bare hash. Must match what is already in the bucket."
  type        = number
  default     = 0
}

variable "s3_replication" {
  description = "Replication level reported to Keep clients (like -s3-replication)."
  type        = number
  default     = 2
}

variable "enforce_permissions" {
  description = "Require valid +A signatures on GET and HEAD."
  type        = bool
  default     = true
}

variable "blob_signature_ttl_seconds" {
  description = "Lifetime of blob permission signatures (Collections.BlobSigningTTL)."
  type        = number
  default     = 1209600
}

variable "trash_enabled" {
  description = "Honour trash requests (false = the reference's -never-delete=true)."
  type        = bool
  default     = true
}

variable "remote_clusters" {
  description = "Federated clusters whose +R blocks keepfn reads for its clients: comma-separated id=URL pairs of their API servers (xyzzy=https://api.xyzzy.example). Empty: none."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([a-z0-9]{5}=https?://[A-Za-z0-9.:-]+/?(,[a-z0-9]{5}=https?://[A-Za-z0-9.:-]+/?)*)?$", var.remote_clusters))
    error_message = "remote_clusters is comma-separated id=URL pairs: a five-character cluster id and its API server's URL, e.g. xyzzy=https://api.xyzzy.example."
  }
}

variable "trash_lifetime" {
  description = "How long trashed blocks stay recoverable before the sweep deletes them (Go duration)."
  type        = string
  default     = "336h"
}

variable "sweep_schedule" {
  description = "EventBridge Scheduler expression for the empty-trash sweep."
  type        = string
  default     = "rate(30 minutes)"
}

variable "lambda_zip" {
  description = "Path of the Lambda package written by `npm run package`."
  type        = string
  default     = "../../artifacts/keepfn-lambda.zip"
}

variable "http_handler" {
  description = "Handler of the HTTP function inside the package: the streamified one, as the Function URL uses RESPONSE_STREAM."
  type        = string
  default     = "index.streamHandler"
}

variable "sweep_handler" {
  description = "Handler of the scheduled empty-trash function inside the package."
  type        = string
  default     = "index.sweepHandler"
}

variable "lambda_runtime" {
  description = "Lambda runtime (the bundle targets Node 20 syntax, so nodejs20.x and nodejs22.x both run it; Node 20 is end-of-life)."
  type        = string
  default     = "nodejs22.x"
}

variable "secrets_cache_ttl" {
  description = "How long a warm function keeps the signing key and tokens before re-reading SSM (Go duration); bounds how long a rotation takes."
  type        = string
  default     = "5m"
}

variable "http_memory_mb" {
  description = "Memory of the HTTP function (also buys CPU: 1769 MB = one vCPU)."
  type        = number
  default     = 2048
}

variable "http_timeout_seconds" {
  description = "Timeout of the HTTP function, also keepfn's request deadline (KEEP_REQUEST_TIMEOUT). A streamed 64 MiB GET runs at 2 MB/s after its first 6 MB (about 35 s)."
  type        = number
  default     = 120
}

variable "sweep_timeout_seconds" {
  description = "Timeout of the sweep function; the sweep stops at its time budget (this less 60 s, KEEP_SWEEP_BUDGET) and resumes on the next run."
  type        = number
  default     = 900

  # KEEP_SWEEP_BUDGET is in the environment of both functions: at 60 s or less it would be 0 (no
  # sweep ever deletes) or negative (every invocation, HTTP ones too, fails on the setting).
  validation {
    condition     = var.sweep_timeout_seconds >= 120 && var.sweep_timeout_seconds <= 900
    error_message = "sweep_timeout_seconds must be 120-900: the sweep's budget is this less 60 s, and Lambda stops a function at 900 s."
  }
}

variable "sweep_reserved_concurrency" {
  description = "Reserved concurrency of the sweep function (1 = one sweep at a time; null = unreserved, for accounts with a low concurrency quota)."
  type        = number
  default     = 1
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention for both functions."
  type        = number
  default     = 30
}

# Secrets: no defaults. Pass them as TF_VAR_blob_signing_key etc. (see infra/README.md); they are
# written to SSM Parameter Store as SecureString and, like every resource argument, to the
# Terraform state, so keep the state in an encrypted backend with restricted access.
variable "blob_signing_key" {
  description = "Arvados BlobSigningKey (same value as the cluster config)."
  type        = string
  sensitive   = true
}

variable "system_root_token" {
  description = "Arvados SystemRootToken (admin routes: index, trash, pull, untrash)."
  type        = string
  sensitive   = true
}

variable "management_token" {
  description = "Arvados ManagementToken (/metrics and /_health)."
  type        = string
  sensitive   = true
}

# ---- optional container host on ECS Fargate (container-host.tf)

variable "enable_container_host" {
  description = "Also run the container host (server/) on ECS Fargate behind an HTTPS load balancer, for clients that PUT 64 MiB blocks."
  type        = bool
  default     = false
}

variable "container_image_tag" {
  description = "Tag of the keepstore image pushed to the <name>-keepstore ECR repository."
  type        = string
  default     = "latest"
}

variable "container_cpu" {
  description = "Fargate task CPU units (1024 = 1 vCPU)."
  type        = number
  default     = 1024
}

variable "container_memory_mb" {
  description = "Fargate task memory; keep container_max_buffers x 64 MiB + 10% below it."
  type        = number
  default     = 4096
}

variable "container_max_buffers" {
  description = "keepstore -max-buffers for the task (each one is a 64 MiB block in flight)."
  type        = number
  default     = 48
}

variable "container_desired_count" {
  description = "Number of keepstore tasks."
  type        = number
  default     = 2
}

variable "vpc_id" {
  description = "VPC for the load balancer and the tasks (container host only)."
  type        = string
  default     = ""
}

variable "container_lb_subnet_ids" {
  description = "At least two subnets in different zones for the load balancer."
  type        = list(string)
  default     = []
}

variable "container_task_subnet_ids" {
  description = "Subnets for the tasks (with a NAT gateway or VPC endpoints for S3, SSM, ECR and Logs)."
  type        = list(string)
  default     = []
}

variable "container_assign_public_ip" {
  description = "Give tasks public addresses (only for public task subnets without NAT)."
  type        = bool
  default     = false
}

variable "container_lb_internal" {
  description = "Make the load balancer internal (clients inside the VPC or a peered network)."
  type        = bool
  default     = false
}

variable "container_certificate_arn" {
  description = "ACM certificate for the load balancer's HTTPS listener."
  type        = string
  default     = ""
}

variable "container_client_cidrs" {
  description = "Client networks allowed to reach the load balancer on 443."
  type        = list(string)
  default     = []
}
