// AWS Lambda entry points (Node.js 20 runtime):
//   handler        API Gateway HTTP API or a BUFFERED Function URL (payload format 2.0)
//   streamHandler  a RESPONSE_STREAM Function URL: GETs stream, so 64 MiB blocks can be read
//   sweepHandler   EventBridge Scheduler: empty-trash within a time budget, resumed next run
// Configured by environment variables (lambda/settings.ts); secrets come from SSM or Secrets Manager.
import { createLambdaHost } from "./host.js";

const host = createLambdaHost(() => process.env);

export const handler = host.buffered;
// `awslambda.streamifyResponse` exists only inside the Lambda runtime (tests install
// lambda/local-runtime.ts first). Not `typeof awslambda`: the AWS SDK itself defines an empty
// `globalThis.awslambda` (@aws/lambda-invoke-store) wherever it is loaded.
export const streamHandler =
  typeof globalThis.awslambda?.streamifyResponse === "function" ? awslambda.streamifyResponse(host.stream) : undefined;
export const sweepHandler = host.sweep;
export const lambdaHost = host;
