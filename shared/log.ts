// Structured JSON logs (pino). Secrets never reach a log line: request headers that carry
// tokens are redacted here, once, for every host.
import { pino } from "pino";

export type Logger = pino.Logger;

export const REDACT_PATHS = [
  "req.headers.authorization",
  "req.headers.cookie",
  "headers.authorization",
  "headers.cookie",
  "token",
  "key",
];

export function createLogger(opts: { level?: string; destination?: pino.DestinationStream } = {}): Logger {
  return pino(
    {
      level: opts.level ?? "info",
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      base: undefined,
      // pino's default appends every cause's message to the error's, but ours already quote
      // their cause ("volume X: cannot read key file Y: ENOENT…"): the reason came out three
      // times. Keep the message as thrown and each cause as its own object.
      serializers: { err: pino.stdSerializers.errWithCause },
    },
    opts.destination,
  );
}

/** A logger that drops everything, for tests that do not inspect logs. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
