terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.29 added aws_lambda_permission.invoked_via_function_url, which public Function URLs need
      # since AWS's October 2025 authorisation change.
      version = ">= 6.29, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      application = "keepfn"
      deployment  = var.name
    }
  }
}
