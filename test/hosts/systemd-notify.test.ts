// The container host under a `Type=notify` unit (Arvados's own keepstore.service): it must send
// READY=1 once it listens, as its own PID, and STOPPING=1 when told to stop. systemd is not PID 1
// here, so a Python listener plays the service manager's side of the protocol: an AF_UNIX
// datagram socket with SO_PASSCRED, exactly what systemd binds at $NOTIFY_SOCKET, reporting each
// datagram with the sender PID the kernel vouches for.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, describe, it } from "node:test";
import { KEEPSTORE } from "../harness/child-hosts.js";
import { KEEPSTORE_LISTENING, listeningUrl } from "../harness/host-process.js";
import { within } from "../harness/wait.js";

const LISTENER = `
import json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind(sys.argv[1])
print(json.dumps({"bound": True}), flush=True)
while True:
    data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(16))
    pid = None
    for level, kind, d in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", d[:12])[0]
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            # systemd-notify's BARRIER=1 sends a pipe; closing it is the manager's "got it".
            for fd in struct.unpack("%di" % (len(d) // 4), d):
                os.close(fd)
    if data == b"BARRIER=1":
        continue
    print(json.dumps({"pid": pid, "lines": data.decode().split("\\n")}), flush=True)
`;

interface Datagram {
  pid: number | null;
  lines: string[];
}

/** A stand-in for systemd's notify socket; `next()` is the next datagram it receives. */
async function notifySocket(dir: string): Promise<{ path: string; next(): Promise<Datagram>; stop(): void }> {
  const path = join(dir, "notify.sock");
  const py = spawn("python3", ["-c", LISTENER, path], { stdio: ["ignore", "pipe", "inherit"] });
  const queue: Datagram[] = [];
  const waiting: Array<(d: Datagram) => void> = [];
  let bound: () => void = () => {};
  const ready = new Promise<void>((r) => {
    bound = r;
  });
  createInterface({ input: py.stdout }).on("line", (line) => {
    const msg = JSON.parse(line);
    if (msg.bound) return bound();
    const w = waiting.shift();
    if (w) w(msg);
    else queue.push(msg);
  });
  const gone = new Promise<never>((_, reject) =>
    py.on("exit", (code) => reject(new Error(`the notify listener exited (${code})`))),
  );
  gone.catch(() => {});
  await Promise.race([ready, gone]);
  return {
    path,
    next: () => {
      const got = queue.shift();
      if (got) return Promise.resolve(got);
      return within(
        Promise.race([new Promise<Datagram>((r) => waiting.push(r)), gone]),
        "a datagram on the notify socket",
      );
    },
    stop: () => py.kill(),
  };
}

function startKeepstore(dir: string, env: NodeJS.ProcessEnv): ChildProcess {
  return spawn(process.execPath, [KEEPSTORE, "-listen=127.0.0.1:0", "-volume", dir], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
}

const accepts = (url: string) =>
  new Promise<boolean>((r) => {
    const { hostname, port } = new URL(url);
    const c = connect(Number(port), hostname, () => {
      c.destroy();
      r(true);
    }).on("error", () => r(false));
  });

describe("container host under a Type=notify systemd unit", () => {
  const dirs: string[] = [];
  const tempDir = async () => {
    const d = await fs.mkdtemp(join(tmpdir(), "keepfn-notify-"));
    dirs.push(d);
    return d;
  };
  after(async () => {
    for (const d of dirs) await fs.rm(d, { recursive: true, force: true });
  });

  it("sends READY=1 as its own PID once it accepts connections, and STOPPING=1 on SIGTERM", async () => {
    const dir = await tempDir();
    const sock = await notifySocket(dir);
    try {
      const child = startKeepstore(dir, { NOTIFY_SOCKET: sock.path });
      const url = await listeningUrl(child, KEEPSTORE_LISTENING);
      const ready = await sock.next();
      assert.ok(ready.lines.includes("READY=1"), `first datagram: ${ready.lines.join(" | ")}`);
      assert.equal(ready.pid, child.pid, "systemd (NotifyAccess=main) believes only the main PID");
      assert.ok(ready.lines.includes(`MAINPID=${child.pid}`));
      assert.equal(await accepts(url), true, "ready means serving");
      const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
      child.kill("SIGTERM");
      const stopping = await sock.next();
      assert.ok(stopping.lines.includes("STOPPING=1"), `second datagram: ${stopping.lines.join(" | ")}`);
      assert.equal(stopping.pid, child.pid);
      assert.equal(await exited, 0);
    } finally {
      sock.stop();
    }
  });

  it("still serves, and says what to do, when the notify socket cannot be reached", async () => {
    const dir = await tempDir();
    const child = startKeepstore(dir, { NOTIFY_SOCKET: join(dir, "no-such.sock") });
    let out = "";
    child.stdout?.on("data", (d) => {
      out += d;
    });
    try {
      const url = await listeningUrl(child, KEEPSTORE_LISTENING);
      assert.equal(await accepts(url), true);
      const warned = await new Promise<boolean>((r) => {
        const look = () => /could not tell systemd READY=1.*Type=simple/.test(out) && r(true);
        child.stdout?.on("data", look);
        look();
        child.on("exit", () => r(false));
      });
      assert.ok(warned, out);
    } finally {
      child.kill("SIGTERM");
    }
  });
});
