// A real pino logger (shared/log.ts) whose lines a test can read: for checks of what is
// logged (causes, statuses) and of what must never be (secrets).
import { Writable } from "node:stream";
import { createLogger, type Logger } from "../../shared/log.js";

export function capturedLogger(level = "debug"): { lines: string[]; logger: Logger } {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      lines.push(...String(chunk).split("\n").filter(Boolean));
      cb();
    },
  });
  return { lines, logger: createLogger({ level, destination }) };
}
