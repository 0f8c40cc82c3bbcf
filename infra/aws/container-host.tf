# Optional: the container host (server/) on ECS Fargate behind an HTTPS Application Load
# Balancer, over the same bucket, for unmodified Arvados clients that PUT 64 MiB blocks (Lambda
# takes at most 6 MB per request). Off unless enable_container_host = true.
#
# The image is artifacts/keepfn-server pushed to the ECR repository created here (see
# infra/README.md). keepstore reads its signing key and tokens from files, so the container's
# command writes the values ECS injects from SSM to a task-private tmpfs-like volume with mode
# 0600, then execs keepstore; the root filesystem stays read-only. S3 credentials come from the
# task role (the SDK's container credentials provider), limited like the Lambda role.

locals {
  container_count = var.enable_container_host ? 1 : 0
  container_flags = [
    "-listen=:25107",
    "-enforce-permissions=${var.enforce_permissions}",
    "-blob-signing-key-file=/run/keepfn/blob-signing.key",
    "-data-manager-token-file=/run/keepfn/system-root.token",
    "-management-token-file=/run/keepfn/management.token",
    "-blob-signature-ttl=${var.blob_signature_ttl_seconds}",
    "-never-delete=${!var.trash_enabled}",
    "-trash-lifetime=${var.trash_lifetime}",
    "-max-buffers=${var.container_max_buffers}",
    "-s3-region=${var.region}",
    "-s3-replication=${var.s3_replication}",
    "-s3-prefix-length=${var.s3_prefix_length}",
    "-s3-conditional-writes=true",
    "-s3-bucket-volume=${local.bucket_name}",
  ]
  # keepfn's own flag, only when federated clusters are configured.
  remote_cluster_flags = var.remote_clusters == "" ? [] : ["-remote-cluster=${var.remote_clusters}"]
  container_start = join(" ", [
    "umask 077",
    "&& printf %s \"$KEEP_BLOB_SIGNING_KEY\" > /run/keepfn/blob-signing.key",
    "&& printf %s \"$KEEP_SYSTEM_ROOT_TOKEN\" > /run/keepfn/system-root.token",
    "&& printf %s \"$KEEP_MANAGEMENT_TOKEN\" > /run/keepfn/management.token",
    "&& unset KEEP_BLOB_SIGNING_KEY KEEP_SYSTEM_ROOT_TOKEN KEEP_MANAGEMENT_TOKEN",
    "&& exec node /opt/keepfn/keepstore.mjs ${join(" ", concat(local.container_flags, local.remote_cluster_flags))}",
  ])
}

resource "aws_ecr_repository" "keepstore" {
  count                = local.container_count
  name                 = "${var.name}-keepstore"
  image_tag_mutability = "IMMUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
}

resource "aws_ecs_cluster" "keepstore" {
  count = local.container_count
  name  = "${var.name}-keepstore"
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "keepstore" {
  count             = local.container_count
  name              = "/ecs/${var.name}-keepstore"
  retention_in_days = var.log_retention_days
}

# ---- roles: execution (pull the image, read the three parameters, write logs) and task (S3)

data "aws_iam_policy_document" "ecs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "keepstore_execution" {
  count              = local.container_count
  name               = "${var.name}-keepstore-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
}

data "aws_iam_policy_document" "keepstore_execution" {
  count = local.container_count
  # ECR's token API has no resource-level permissions: "*" is the only valid resource.
  statement {
    sid       = "EcrToken"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  statement {
    sid       = "PullKeepstoreImage"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    resources = [aws_ecr_repository.keepstore[0].arn]
  }
  statement {
    sid     = "ReadSecrets"
    actions = ["ssm:GetParameters"]
    resources = [
      aws_ssm_parameter.blob_signing_key.arn,
      aws_ssm_parameter.system_root_token.arn,
      aws_ssm_parameter.management_token.arn,
    ]
  }
  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.keepstore[0].arn}:*"]
  }
}

resource "aws_iam_role_policy" "keepstore_execution" {
  count  = local.container_count
  name   = "${var.name}-keepstore-execution"
  role   = aws_iam_role.keepstore_execution[0].id
  policy = data.aws_iam_policy_document.keepstore_execution[0].json
}

resource "aws_iam_role" "keepstore_task" {
  count              = local.container_count
  name               = "${var.name}-keepstore-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
}

data "aws_iam_policy_document" "keepstore_task" {
  count = local.container_count
  statement {
    sid       = "ListBlocks"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
  }
  statement {
    sid       = "ReadWriteBlocks"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${local.bucket_arn}/*"]
  }
}

resource "aws_iam_role_policy" "keepstore_task" {
  count  = local.container_count
  name   = "${var.name}-keepstore-task"
  role   = aws_iam_role.keepstore_task[0].id
  policy = data.aws_iam_policy_document.keepstore_task[0].json
}

# ---- the task and the service

resource "aws_ecs_task_definition" "keepstore" {
  count                    = local.container_count
  family                   = "${var.name}-keepstore"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.container_cpu
  memory                   = var.container_memory_mb
  execution_role_arn       = aws_iam_role.keepstore_execution[0].arn
  task_role_arn            = aws_iam_role.keepstore_task[0].arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "ARM64"
  }

  # Task-private scratch space for the secret files (Fargate ephemeral storage, never shared).
  volume {
    name = "secrets"
  }

  container_definitions = jsonencode([
    {
      name                   = "keepstore"
      image                  = "${aws_ecr_repository.keepstore[0].repository_url}:${var.container_image_tag}"
      essential              = true
      user                   = "1000:1000"
      readonlyRootFilesystem = true
      entryPoint             = ["/bin/sh", "-c"]
      command                = [local.container_start]
      portMappings           = [{ containerPort = 25107, protocol = "tcp" }]
      mountPoints            = [{ sourceVolume = "secrets", containerPath = "/run/keepfn", readOnly = false }]
      secrets = [
        { name = "KEEP_BLOB_SIGNING_KEY", valueFrom = aws_ssm_parameter.blob_signing_key.arn },
        { name = "KEEP_SYSTEM_ROOT_TOKEN", valueFrom = aws_ssm_parameter.system_root_token.arn },
        { name = "KEEP_MANAGEMENT_TOKEN", valueFrom = aws_ssm_parameter.management_token.arn },
      ]
      # keepstore drains in-flight requests for up to 30 s after SIGTERM.
      stopTimeout = 45
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.keepstore[0].name
          awslogs-region        = var.region
          awslogs-stream-prefix = "keepstore"
        }
      }
    }
  ])
}

resource "aws_security_group" "keepstore_alb" {
  count       = local.container_count
  name        = "${var.name}-keepstore-alb"
  description = "HTTPS from Keep clients to the keepstore load balancer"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "keepstore_alb_https" {
  for_each          = var.enable_container_host ? toset(var.container_client_cidrs) : toset([])
  security_group_id = aws_security_group.keepstore_alb[0].id
  cidr_ipv4         = each.value
  from_port         = 443
  to_port           = 443
  ip_protocol       = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "keepstore_alb_to_tasks" {
  count                        = local.container_count
  security_group_id            = aws_security_group.keepstore_alb[0].id
  referenced_security_group_id = aws_security_group.keepstore_task[0].id
  from_port                    = 25107
  to_port                      = 25107
  ip_protocol                  = "tcp"
}

resource "aws_security_group" "keepstore_task" {
  count       = local.container_count
  name        = "${var.name}-keepstore-task"
  description = "keepstore tasks: 25107 from the load balancer only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "keepstore_task_from_alb" {
  count                        = local.container_count
  security_group_id            = aws_security_group.keepstore_task[0].id
  referenced_security_group_id = aws_security_group.keepstore_alb[0].id
  from_port                    = 25107
  to_port                      = 25107
  ip_protocol                  = "tcp"
}

# S3, SSM, ECR and CloudWatch Logs over HTTPS (through a NAT gateway or VPC endpoints).
resource "aws_vpc_security_group_egress_rule" "keepstore_task_https" {
  count             = local.container_count
  security_group_id = aws_security_group.keepstore_task[0].id
  cidr_ipv4         = "0.0.0.0/0"
  from_port         = 443
  to_port           = 443
  ip_protocol       = "tcp"
}

resource "aws_lb" "keepstore" {
  count = local.container_count
  lifecycle {
    precondition {
      condition     = var.vpc_id != "" && var.container_certificate_arn != "" && length(var.container_lb_subnet_ids) >= 2 && length(var.container_task_subnet_ids) >= 1
      error_message = "enable_container_host needs vpc_id, container_certificate_arn, two container_lb_subnet_ids and container_task_subnet_ids."
    }
  }
  name                       = "${var.name}-keepstore"
  load_balancer_type         = "application"
  internal                   = var.container_lb_internal
  subnets                    = var.container_lb_subnet_ids
  security_groups            = [aws_security_group.keepstore_alb[0].id]
  drop_invalid_header_fields = true
  # A 64 MiB PUT from a slow client must not be cut off.
  idle_timeout = 300
}

resource "aws_lb_target_group" "keepstore" {
  count                = local.container_count
  name                 = "${var.name}-keepstore"
  port                 = 25107
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 45

  # Load balancer health checks cannot send the management token: a 401 from /_health/ping
  # proves keepstore is up and answering (200 would need the token).
  health_check {
    path                = "/_health/ping"
    matcher             = "200,401"
    interval            = 15
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "keepstore_https" {
  count             = local.container_count
  load_balancer_arn = aws_lb.keepstore[0].arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.container_certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.keepstore[0].arn
  }
}

resource "aws_ecs_service" "keepstore" {
  count                              = local.container_count
  name                               = "${var.name}-keepstore"
  cluster                            = aws_ecs_cluster.keepstore[0].id
  task_definition                    = aws_ecs_task_definition.keepstore[0].arn
  desired_count                      = var.container_desired_count
  launch_type                        = "FARGATE"
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  network_configuration {
    subnets          = var.container_task_subnet_ids
    security_groups  = [aws_security_group.keepstore_task[0].id]
    assign_public_ip = var.container_assign_public_ip
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.keepstore[0].arn
    container_name   = "keepstore"
    container_port   = 25107
  }

  depends_on = [aws_lb_listener.keepstore_https]
}
