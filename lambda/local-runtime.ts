// A local implementation of the Lambda response-streaming contract, for tests and the local
// host: awslambda.streamifyResponse marks the handler; HttpResponseStream.from writes the
// HTTP prelude (JSON status/headers/cookies) and 8 NUL bytes, then the body follows, which
// is exactly what the Function URL front end reads from the runtime.
export const PRELUDE_DELIMITER = Buffer.alloc(8);

export function installLocalLambdaRuntime(): void {
  // Merged into whatever is there: the AWS SDK defines an empty `awslambda` object itself.
  const g = globalThis as unknown as { awslambda?: Record<string, unknown> };
  if (typeof g.awslambda?.streamifyResponse === "function") return;
  g.awslambda = Object.assign(g.awslambda ?? {}, {
    streamifyResponse: <T>(h: T): T => h,
    HttpResponseStream: {
      from(stream: NodeJS.WritableStream, prelude: object) {
        stream.write(JSON.stringify(prelude));
        stream.write(PRELUDE_DELIMITER);
        return stream;
      },
    },
  });
}
