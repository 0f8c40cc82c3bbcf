// A local implementation of the Lambda response-streaming contract, for tests and the local
// host: awslambda.streamifyResponse marks the handler; HttpResponseStream.from arranges for
// the HTTP prelude (JSON status/headers/cookies) and 8 NUL bytes to go out, then the body
// follows, which is exactly what the Function URL front end reads from the runtime. As in the
// real runtime (aws-lambda-nodejs-runtime-interface-client, HttpResponseStream: the prelude is
// written by a hook "right before the first actual write"), nothing is sent until the first
// write(): a handler that ends the stream without writing gets a bare 200 with no headers.
export const PRELUDE_DELIMITER = Buffer.alloc(8);

export function installLocalLambdaRuntime(): void {
  // Merged into whatever is there: the AWS SDK defines an empty `awslambda` object itself.
  const g = globalThis as unknown as { awslambda?: Record<string, unknown> };
  if (typeof g.awslambda?.streamifyResponse === "function") return;
  g.awslambda = Object.assign(g.awslambda ?? {}, {
    streamifyResponse: <T>(h: T): T => h,
    HttpResponseStream: {
      from(stream: NodeJS.WritableStream, prelude: object) {
        const write = stream.write.bind(stream) as (...args: unknown[]) => boolean;
        let first = true;
        stream.write = ((...args: unknown[]) => {
          if (first) {
            first = false;
            write(JSON.stringify(prelude));
            write(PRELUDE_DELIMITER);
          }
          return write(...args);
        }) as typeof stream.write;
        return stream;
      },
    },
  });
}
