// AWS Lambda's platform limits, in one place: the local host enforces them and the handlers
// explain them, so a request that cannot work in AWS fails the same way on a laptop.
import { PlatformLimitError } from "../shared/errors.js";

/** Synchronous invocation payload, each way ("6 MB": 6,291,456 bytes, event JSON included). */
export const MAX_EVENT_BYTES = 6 * 1024 * 1024;
/** Room the rest of a Function URL event takes (headers, request context). */
export const EVENT_OVERHEAD_BYTES = 16 * 1024;
/** The largest binary body that fits once base64-encoded: about 4.5 MiB. */
export const MAX_BINARY_BODY = Math.floor(((MAX_EVENT_BYTES - EVENT_OVERHEAD_BYTES) * 3) / 4);
/** Streamed responses (Function URL, RESPONSE_STREAM): 200 MB. */
export const MAX_STREAMED_RESPONSE = 200 * 1024 * 1024;

export function tooLargeForLambda(bytes: number | undefined): PlatformLimitError {
  const size = bytes === undefined ? "this request body" : `a request body of ${bytes} bytes`;
  return new PlatformLimitError(
    `${size} is too large for AWS Lambda: a synchronous invocation carries at most 6 MB, about ` +
      `${MAX_BINARY_BODY} bytes of binary data once base64-encoded. Upload larger blocks in two steps ` +
      "(POST /uploads/<hash>+<size>, PUT the bytes to the returned upload_url with the returned headers, " +
      "then POST the commit_url), or write them through the container host (keepstore on ECS/Fargate), " +
      "which takes 64 MiB blocks.",
  );
}
