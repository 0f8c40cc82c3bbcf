// The Function App entry point (package "main"): registers the HTTP trigger for every
// keepstore route and the empty-trash timer, and exports the handlers and the route table so
// they can be driven without the Functions runtime (tests, keepfn-local).
// Under native ESM on Node 20 @azure/functions must be a default import (its classes are not
// detected as named exports of the CJS bundle).
import azf from "@azure/functions";
import { makeHandlers } from "./handlers.js";
import { createInstance } from "./instance.js";

export const instance = createInstance(process.env);
const handlers = makeHandlers(instance);

/** GET/HEAD/PUT blocks, TOUCH, DELETE, untrash, index, mounts, pull, trash, metrics, health. */
export const keepHttp = handlers.http;
/** Empty expired trash on every mount that allows trash, within KEEP_SWEEP_BUDGET. */
export const keepEmptyTrash = handlers.timer;

/** Standard methods of the keepstore API (POST and others reach the router, which answers 400). */
export const HTTP_METHODS = ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "POST", "PATCH"] as const;

/**
 * Everything the app registers. One catch-all HTTP function keeps the core's router the only
 * router (host.json sets an empty routePrefix, so paths are keepstore's). The library defaults
 * `methods` to GET and POST, so they are listed. keepstore's non-standard TOUCH gets its own
 * function: if the Functions front end refuses the method, only that function is affected.
 */
export const FUNCTIONS = [
  {
    kind: "http",
    name: "keep",
    route: "{*path}",
    methods: HTTP_METHODS,
    authLevel: instance.settings.authLevel,
    handler: keepHttp,
  },
  {
    kind: "http",
    name: "keepTouch",
    route: "{*path}",
    methods: ["TOUCH"],
    authLevel: instance.settings.authLevel,
    handler: keepHttp,
  },
  // NCRONTAB from the app setting, resolved by the Functions host (e.g. "0 0 */6 * * *").
  { kind: "timer", name: "emptyTrash", schedule: "%KEEP_TRASH_SCHEDULE%", handler: keepEmptyTrash },
] as const;

azf.app.setup({ enableHttpStream: true });
for (const f of FUNCTIONS) {
  if (f.kind === "http") {
    const methods = [...f.methods] as unknown as azf.HttpMethod[];
    azf.app.http(f.name, { route: f.route, methods, authLevel: f.authLevel, handler: f.handler });
  } else azf.app.timer(f.name, { schedule: f.schedule, runOnStartup: false, handler: f.handler });
}
