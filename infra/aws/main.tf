# keepfn on AWS: Keep's block API on Lambda over one S3 bucket.
#
#   - "http" function behind a Lambda Function URL with invoke_mode RESPONSE_STREAM, so GET can
#     return a whole 64 MiB block (streamed responses go up to 200 MB; buffered ones stop at 6 MB).
#     A Function URL rather than API Gateway: an HTTP API caps payloads at 10 MB and integrations
#     at 30 s, a REST API also at 10 MB; neither carries a 64 MiB block in either direction.
#     Requests are still capped at 6 MB by Lambda itself: large PUTs use keepfn's two-step
#     upload (presigned S3 PUT + commit), or the container host (server/) for unmodified clients.
#   - "sweep" function run by EventBridge Scheduler to empty expired trash.
#   - S3 bucket: public access blocked, TLS-only policy, SSE-S3 (AES256). SSE-S3 rather than
#     SSE-KMS on purpose: with SSE-KMS an object's ETag is no longer its MD5, and the two-step
#     upload verifies the stored block through the ETag.
#   - One execution role for both functions, limited to the exact S3 actions on this bucket and
#     to reading this deployment's three SSM parameters.
#
# Deploy: infra/aws/deploy.sh (see infra/README.md).

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  create_bucket = var.existing_bucket_name == ""
  bucket_name   = local.create_bucket ? coalesce(var.bucket_name, "${var.name}-blocks-${data.aws_caller_identity.current.account_id}-${var.region}") : var.existing_bucket_name
  bucket_arn    = "arn:${data.aws_partition.current.partition}:s3:::${local.bucket_name}"
  param_prefix  = "/${var.name}"

  # Read by lambda/settings.ts. Secret *names* only; the values stay in SSM.
  lambda_env = {
    KEEP_CLUSTER_ID                     = var.cluster_id
    KEEP_S3_BUCKET                      = local.bucket_name
    KEEP_S3_REGION                      = var.region
    KEEP_S3_PREFIX_LENGTH               = tostring(var.s3_prefix_length)
    KEEP_S3_REPLICATION                 = tostring(var.s3_replication)
    KEEP_S3_CONDITIONAL_WRITES          = "true" # AWS S3 honours If-None-Match: * (no probe per cold start)
    KEEP_ENFORCE_PERMISSIONS            = tostring(var.enforce_permissions)
    KEEP_BLOB_SIGNING_TTL               = tostring(var.blob_signature_ttl_seconds)
    KEEP_TRASH_ENABLED                  = tostring(var.trash_enabled)
    KEEP_TRASH_LIFETIME                 = var.trash_lifetime
    KEEP_REMOTE_CLUSTERS                = var.remote_clusters
    KEEP_BLOB_SIGNING_KEY_PARAM         = aws_ssm_parameter.blob_signing_key.name
    KEEP_SYSTEM_ROOT_TOKEN_PARAM        = aws_ssm_parameter.system_root_token.name
    KEEP_MANAGEMENT_TOKEN_PARAM         = aws_ssm_parameter.management_token.name
    KEEP_SECRETS_CACHE_TTL              = var.secrets_cache_ttl
    KEEP_SWEEP_BUDGET                   = "${var.sweep_timeout_seconds - 60}s"
    KEEP_REQUEST_TIMEOUT                = "${var.http_timeout_seconds}s" # the HTTP function's deadline; the sweep ignores it
    AWS_NODEJS_CONNECTION_REUSE_ENABLED = "1"
  }
}

# ------------------------------------------------------------------------------- S3 bucket

resource "aws_s3_bucket" "blocks" {
  count  = local.create_bucket ? 1 : 0
  bucket = local.bucket_name
}

resource "aws_s3_bucket_public_access_block" "blocks" {
  count                   = local.create_bucket ? 1 : 0
  bucket                  = aws_s3_bucket.blocks[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "blocks" {
  count  = local.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.blocks[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "blocks" {
  count  = local.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.blocks[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "blocks" {
  count  = local.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.blocks[0].id
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      local.bucket_arn,
      "${local.bucket_arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "blocks" {
  count  = local.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.blocks[0].id
  policy = data.aws_iam_policy_document.bucket.json
  # The public access block must exist first, or S3 may judge the policy before it applies.
  depends_on = [aws_s3_bucket_public_access_block.blocks]
}

# ------------------------------------------------------------------------------- secrets

resource "aws_ssm_parameter" "blob_signing_key" {
  name        = "${local.param_prefix}/blob-signing-key"
  description = "Arvados BlobSigningKey for keepfn"
  type        = "SecureString"
  value       = var.blob_signing_key
}

resource "aws_ssm_parameter" "system_root_token" {
  name        = "${local.param_prefix}/system-root-token"
  description = "Arvados SystemRootToken for keepfn"
  type        = "SecureString"
  value       = var.system_root_token
}

resource "aws_ssm_parameter" "management_token" {
  name        = "${local.param_prefix}/management-token"
  description = "Arvados ManagementToken for keepfn"
  type        = "SecureString"
  value       = var.management_token
}

# ------------------------------------------------------------------------------- execution role

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "lambda" {
  name               = "${var.name}-lambda"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

data "aws_iam_policy_document" "lambda" {
  # Index (ListObjectsV2) of this bucket only.
  statement {
    sid       = "ListBlocks"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
  }
  # Get/Head, Put (also the presigned two-step upload and the recent/ markers), Copy (Get on the
  # source + Put on the target, for trash/untrash/touch) and Delete, on objects of this bucket.
  statement {
    sid = "ReadWriteBlocks"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
    ]
    resources = ["${local.bucket_arn}/*"]
  }
  # The three secrets of this deployment, read in one GetParameters call (SecureString with the
  # AWS-managed aws/ssm key, whose key policy already lets this account's principals decrypt
  # through SSM, so no kms:Decrypt statement is needed).
  statement {
    sid     = "ReadSecrets"
    actions = ["ssm:GetParameters"]
    resources = [
      aws_ssm_parameter.blob_signing_key.arn,
      aws_ssm_parameter.system_root_token.arn,
      aws_ssm_parameter.management_token.arn,
    ]
  }
  # Logs of these two functions only (no logs:CreateLogGroup: Terraform creates the groups).
  statement {
    sid     = "WriteLogs"
    actions = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [
      "${aws_cloudwatch_log_group.http.arn}:*",
      "${aws_cloudwatch_log_group.sweep.arn}:*",
    ]
  }
}

resource "aws_iam_role_policy" "lambda" {
  name   = "${var.name}-lambda"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.lambda.json
}

# ------------------------------------------------------------------------------- functions

resource "aws_cloudwatch_log_group" "http" {
  name              = "/aws/lambda/${var.name}-http"
  retention_in_days = var.log_retention_days
}

resource "aws_cloudwatch_log_group" "sweep" {
  name              = "/aws/lambda/${var.name}-sweep"
  retention_in_days = var.log_retention_days
}

resource "aws_lambda_function" "http" {
  function_name    = "${var.name}-http"
  description      = "keepfn: Keep block API (Function URL, response streaming)"
  role             = aws_iam_role.lambda.arn
  filename         = var.lambda_zip
  source_code_hash = filebase64sha256(var.lambda_zip)
  handler          = var.http_handler
  runtime          = var.lambda_runtime
  architectures    = ["arm64"]
  memory_size      = var.http_memory_mb
  timeout          = var.http_timeout_seconds

  environment {
    variables = local.lambda_env
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.http.name
  }

  depends_on = [aws_iam_role_policy.lambda]
}

resource "aws_lambda_function" "sweep" {
  function_name                  = "${var.name}-sweep"
  description                    = "keepfn: empty expired trash (EventBridge Scheduler)"
  role                           = aws_iam_role.lambda.arn
  filename                       = var.lambda_zip
  source_code_hash               = filebase64sha256(var.lambda_zip)
  handler                        = var.sweep_handler
  runtime                        = var.lambda_runtime
  architectures                  = ["arm64"]
  memory_size                    = 1024
  timeout                        = var.sweep_timeout_seconds
  reserved_concurrent_executions = var.sweep_reserved_concurrency

  environment {
    variables = local.lambda_env
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.sweep.name
  }

  depends_on = [aws_iam_role_policy.lambda]
}

# Keep clients authenticate with Arvados tokens that keepfn checks itself, so the URL has no IAM
# auth. Since October 2025 a public Function URL needs both statements below.
resource "aws_lambda_function_url" "http" {
  function_name      = aws_lambda_function.http.function_name
  authorization_type = "NONE"
  invoke_mode        = "RESPONSE_STREAM"
}

resource "aws_lambda_permission" "url_public" {
  statement_id           = "keepfn-function-url-public"
  action                 = "lambda:InvokeFunctionUrl"
  function_name          = aws_lambda_function.http.function_name
  principal              = "*"
  function_url_auth_type = "NONE"
}

resource "aws_lambda_permission" "url_invoke" {
  statement_id             = "keepfn-function-url-invoke"
  action                   = "lambda:InvokeFunction"
  function_name            = aws_lambda_function.http.function_name
  principal                = "*"
  invoked_via_function_url = true
}

# ------------------------------------------------------------------------------- the sweep schedule

data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "scheduler" {
  name               = "${var.name}-scheduler"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json
}

data "aws_iam_policy_document" "scheduler" {
  statement {
    sid       = "InvokeSweep"
    actions   = ["lambda:InvokeFunction"]
    resources = [aws_lambda_function.sweep.arn]
  }
}

resource "aws_iam_role_policy" "scheduler" {
  name   = "${var.name}-scheduler"
  role   = aws_iam_role.scheduler.id
  policy = data.aws_iam_policy_document.scheduler.json
}

resource "aws_scheduler_schedule" "sweep" {
  name                = "${var.name}-sweep"
  description         = "keepfn: empty expired trash"
  schedule_expression = var.sweep_schedule

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_lambda_function.sweep.arn
    role_arn = aws_iam_role.scheduler.arn
    input    = jsonencode({ source = "keepfn.scheduler", action = "empty-trash" })

    # A missed sweep is simply done by the next one.
    retry_policy {
      maximum_retry_attempts = 0
    }
  }
}
