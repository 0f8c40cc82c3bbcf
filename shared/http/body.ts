// Converting between async iterables and web streams without buffering: pull-based, so the
// producer advances only as fast as the consumer reads, and a cancel closes the source.

export function iterableToStream(src: AsyncIterable<Uint8Array>): ReadableStream<Uint8Array> {
  const it = src[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const r = await it.next();
        if (r.done) controller.close();
        else controller.enqueue(r.value);
      },
      async cancel() {
        await it.return?.();
      },
    },
    { highWaterMark: 0 },
  );
}

/**
 * A request body as an async iterable (an empty one when there is no body). With `signal`,
 * a read still waiting when the request is aborted (deadline, client gone) ends with the
 * abort reason: a host may never end a body whose response has already been sent, and a
 * consumer waiting on it would hold its buffer and temp file forever.
 */
export async function* streamToIterable(
  body: ReadableStream<Uint8Array> | null,
  signal?: AbortSignal,
): AsyncGenerator<Uint8Array> {
  if (!body) return;
  const reader = body.getReader();
  let finished = false;
  const onAbort = () => void reader.cancel(signal?.reason).catch(() => {});
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    for (;;) {
      if (signal?.aborted) throw signal.reason;
      const r = await reader.read();
      if (r.done) {
        // A cancel by the abort ends the pending read as if the body were complete: it is not.
        if (signal?.aborted) throw signal.reason;
        finished = true;
        return;
      }
      yield r.value;
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    // Stopped early: tell the host to stop reading the client's body.
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/** Read a small body (JSON lists) with a hard cap, so a huge body cannot exhaust memory. */
export async function readCapped(
  body: ReadableStream<Uint8Array> | null,
  cap: number,
  signal?: AbortSignal,
): Promise<Buffer | undefined> {
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const chunk of streamToIterable(body, signal)) {
    n += chunk.length;
    if (n > cap) return undefined;
    parts.push(chunk);
  }
  return Buffer.concat(parts);
}
