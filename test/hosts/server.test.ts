import { describeHttpContract } from "../conformance/http-contract.js";
import { startPosixServer } from "../harness/posix-server.js";

describeHttpContract("container host over POSIX", async (overrides, { clock }) => {
  const s = await startPosixServer(overrides, { clock });
  return { url: s.url, close: () => s.cleanup() };
});
