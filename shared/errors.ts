// Typed errors of the Keep core. They carry no HTTP status: shared/http/error-response.ts
// alone decides how each one is rendered, so the core stays host- and protocol-neutral.

export class KeepError extends Error {
  /** Stable machine-readable code, also used as the metrics error_type label. */
  readonly code: string = "keep_error";
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The block is absent or trashed on this volume (or on every volume). */
export class NotFoundError extends KeepError {
  override readonly code: string = "not_found";
  constructor(message = "file does not exist", options?: ErrorOptions) {
    super(message, options);
  }
}

/** Any client mistake that the reference answers with 400 and a message. */
export class BadRequestError extends KeepError {
  override readonly code: string = "bad_request";
}

export class BadLocatorError extends BadRequestError {
  override readonly code: string = "invalid_locator";
  constructor(options?: ErrorOptions) {
    super("invalid locator", options);
  }
}

/** The uploaded bytes do not hash to the locator they were sent to. */
export class HashMismatchError extends BadRequestError {
  override readonly code: string = "hash_mismatch";
}

export class ContentLengthMismatchError extends BadRequestError {
  override readonly code: string = "content_length_mismatch";
}

export class InvalidSignatureError extends BadRequestError {
  override readonly code: string = "invalid_signature";
  constructor() {
    super("invalid signature");
  }
}

export class RouteNotFoundError extends BadRequestError {
  override readonly code: string = "bad_route";
  constructor() {
    super("Bad Request");
  }
}

export class MethodNotAllowedError extends KeepError {
  override readonly code: string = "method_not_allowed";
  constructor(message = "method not allowed") {
    super(message);
  }
}

export class UnauthorizedError extends KeepError {
  override readonly code: string = "unauthorized";
  constructor(message = "Unauthorized") {
    super(message);
  }
}

export class ForbiddenError extends KeepError {
  override readonly code: string = "forbidden";
  constructor(message = "Forbidden") {
    super(message);
  }
}

export class TooLargeError extends KeepError {
  override readonly code: string = "too_large";
  constructor(message = "request entity too large: blocks are at most 67108864 bytes", options?: ErrorOptions) {
    super(message, options);
  }
}

/** A mount already holds different bytes under this hash (or its stored copy is corrupt). */
export class CollisionError extends KeepError {
  override readonly code: string = "hash_collision";
  constructor() {
    super("hash collision");
  }
}

/** Stored data does not hash to its name: the stored copy is corrupt. */
export class ChecksumMismatchError extends KeepError {
  override readonly code: string = "checksum_mismatch";
  constructor(message = "checksum mismatch in stored data") {
    super(message);
  }
}

/** No acceptable writable mount, or every attempted write said the volume is full. */
export class InsufficientStorageError extends KeepError {
  override readonly code: string = "insufficient_storage";
  constructor(message = "insufficient storage", options?: ErrorOptions) {
    super(message, options);
  }
}

/** A volume refused a write because it is full (translated to 507 by the service). */
export class VolumeFullError extends KeepError {
  override readonly code: string = "volume_full";
  constructor(message = "volume is full", options?: ErrorOptions) {
    super(message, options);
  }
}

/** The backend could not be reached or answered 5xx; clients retry on 503. */
export class VolumeUnavailableError extends KeepError {
  override readonly code: string = "volume_unavailable";
  constructor(message = "volume unavailable", options?: ErrorOptions) {
    super(message, options);
  }
}

/**
 * A PUT failed on a mount after its body was streamed there, while another writable mount has
 * room: a retry on this server goes there. Rendered 500, not 503: the Go SDK's BlockWrite
 * retries every 5xx on the same server except 503 (sdk/go/keepclient/support.go), the Python
 * SDK 500 and 503 but not 507.
 */
export class RetryableWriteError extends VolumeUnavailableError {}

/** A write or trash was attempted on a mount that does not allow it. */
export class ReadOnlyError extends KeepError {
  override readonly code: string = "read_only";
  constructor(message = "volume is read-only") {
    super(message);
  }
}

/** The request was cancelled: the client went away or the request deadline passed. */
export class CancelledError extends KeepError {
  override readonly code: string = "cancelled";
  constructor(message = "request cancelled", options?: ErrorOptions) {
    super(message, options);
  }
}

/** The request limiter's queue is full. */
export class OverloadedError extends KeepError {
  override readonly code: string = "overloaded";
  constructor() {
    super("server is busy: too many concurrent requests, retry later");
  }
}

/** A platform limit the host cannot lift (e.g. Lambda's request payload cap). */
export class PlatformLimitError extends TooLargeError {
  override readonly code: string = "platform_limit";
}

/** A feature turned off by configuration (e.g. DELETE with trash disabled). */
export class DisabledError extends MethodNotAllowedError {}

/** An error from a volume that names the HTTP status the backend answered with. */
export class BackendError extends KeepError {
  override readonly code: string = "backend_error";
  constructor(
    message: string,
    readonly status: number,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export function isNotFound(err: unknown): boolean {
  return err instanceof NotFoundError;
}

/** Turn an AbortSignal's reason into the core's CancelledError. */
export function cancelled(signal: AbortSignal | undefined): CancelledError {
  const reason = signal?.reason;
  if (reason instanceof CancelledError) return reason;
  return new CancelledError("request cancelled", { cause: reason });
}

/** Whether `signal` ended because the request's deadline passed (AbortSignal.timeout), not because the client left. */
export function deadlinePassed(signal: AbortSignal | undefined): boolean {
  return (signal?.reason as { name?: string } | undefined)?.name === "TimeoutError";
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw cancelled(signal);
}

export class ExpiredSignatureError extends UnauthorizedError {
  override readonly code: string = "expired_signature";
  constructor() {
    super("expired signature");
  }
}
