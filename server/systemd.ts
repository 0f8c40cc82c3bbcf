// sd_notify for Arvados's own keepstore.service, which is `Type=notify`: systemd waits for
// READY=1 and, without it, kills the service after TimeoutStartSec. The reference sends READY=1
// once it listens; so do we, and STOPPING=1 when a signal starts the graceful shutdown.
//
// The protocol is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET, and Node has no
// Unix datagram sockets, so systemd's own `systemd-notify` sends it. Under the default
// NotifyAccess=main systemd only believes messages whose sender credentials carry the main
// PID: `--pid` makes systemd-notify put ours there, which the kernel allows a root process
// (Arvados's unit runs keepstore as root). Run as another user, the unit needs
// NotifyAccess=all; or use Type=simple, as infra/posix/keepstore.service does.
import { execFile } from "node:child_process";
import type { Logger } from "../shared/log.js";

export type NotifyState = "READY=1" | "STOPPING=1";

/** Tell systemd `state` when it asked to be told ($NOTIFY_SOCKET); resolves once sent or failed. */
export function notifySystemd(state: NotifyState, env: NodeJS.ProcessEnv, logger: Logger): Promise<void> {
  if (!env.NOTIFY_SOCKET) return Promise.resolve();
  const status = state === "READY=1" ? "STATUS=serving" : "STATUS=finishing in-flight requests";
  return new Promise((resolve) => {
    execFile("systemd-notify", [`--pid=${process.pid}`, state, status], { env, timeout: 10_000 }, (err, _o, stderr) => {
      if (err) {
        logger.warn(
          { err, stderr: String(stderr).trim(), notifySocket: env.NOTIFY_SOCKET },
          `could not tell systemd ${state} through systemd-notify: a Type=notify unit will time out; ` +
            "install systemd-notify, or set Type=simple in the unit (infra/posix/keepstore.service)",
        );
      }
      resolve();
    });
  });
}
