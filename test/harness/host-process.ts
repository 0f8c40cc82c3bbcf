// Waiting for a host started as a child process (the keepstore executable, keepfn-local) to
// say where it listens. Both print their URL once the socket is bound, so a test started on
// port 0 learns the port from that line instead of probing.
import type { ChildProcess } from "node:child_process";

/** The container host's start-up log line (pino JSON); group 1 is its URL. */
export const KEEPSTORE_LISTENING = /"url":"(https?:\/\/[^"]+)".*"msg":"keepstore listening/;
/** keepfn-local's start-up line on stderr; group 1 is its URL. */
export const KEEPFN_LOCAL_LISTENING = /handlers serving (http:\/\/\S+)/;

/**
 * Group 1 of `pattern` once `child` prints it on stdout or stderr. Rejects with everything it
 * printed if it exits first, or after `timeoutMs`.
 */
export function listeningUrl(child: ChildProcess, pattern: RegExp, timeoutMs = 30_000): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    let seen = "";
    const done = (settle: () => void) => {
      clearTimeout(timer);
      child.stdout?.off("data", look);
      child.stderr?.off("data", look);
      child.off("exit", onExit);
      settle();
    };
    const look = (d: Buffer) => {
      seen += d;
      const m = pattern.exec(seen);
      if (m) done(() => resolve(m[1] as string));
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) =>
      done(() => reject(new Error(`host exited (${signal ?? code}) before it listened: ${seen}`)));
    const timer = setTimeout(
      () => done(() => reject(new Error(`host did not say where it listens within ${timeoutMs} ms: ${seen}`))),
      timeoutMs,
    );
    child.stdout?.on("data", look);
    child.stderr?.on("data", look);
    child.on("exit", onExit);
  });
}
