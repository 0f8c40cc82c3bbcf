// The ONLY place errors become HTTP statuses. Bodies are the message plus "\n", as keepstore
// writes them; a cancelled request gets 499 and no body.
import * as E from "../errors.js";

const TABLE: Array<[new (...args: never[]) => Error, number]> = [
  [E.CancelledError, 499],
  [E.NotFoundError, 404],
  [E.UnauthorizedError, 401],
  [E.ForbiddenError, 403],
  [E.MethodNotAllowedError, 405],
  [E.BadRequestError, 400],
  [E.TooLargeError, 413],
  [E.CollisionError, 500],
  [E.ChecksumMismatchError, 502],
  [E.InsufficientStorageError, 507],
  [E.VolumeFullError, 507],
  [E.RetryableWriteError, 500],
  [E.VolumeUnavailableError, 503],
  [E.OverloadedError, 503],
  [E.ReadOnlyError, 405],
];

export function statusFor(err: unknown): number {
  if (err instanceof E.BackendError) return err.status;
  for (const [cls, status] of TABLE) if (err instanceof cls) return status;
  return 500;
}

export function errorResponse(err: unknown, headers: Headers): Response {
  const status = statusFor(err);
  if (status === 499) return new Response(null, { status, headers });
  // Unexpected errors (500) say what happened without leaking internals such as paths.
  const message = err instanceof E.KeepError || status !== 500 ? (err as Error).message : "internal server error";
  headers.set("content-type", "text/plain; charset=utf-8");
  return new Response(`${message}\n`, { status, headers });
}
