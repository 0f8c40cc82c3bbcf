#!/usr/bin/env node
// The keepstore executable's entry point. It only sizes libuv's thread pool, then loads the
// server (main.ts). Every file-system call of every volume runs on that pool, and its default
// of 4 threads means 4 calls stuck on one stalled disk (a hung NFS server, a dying drive) stop
// the I/O of every other volume too, and a host with many disks can keep at most 4 busy. The
// size is read once, when the pool first starts, which the ES module loader already does while
// loading main.js: hence this CommonJS file, which sets it before loading anything. 256 is the
// default -max-requests; an operator's own UV_THREADPOOL_SIZE is kept (libuv's limit is 1024).
process.env.UV_THREADPOOL_SIZE ??= "256";
void import("./main.js");
