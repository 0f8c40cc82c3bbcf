#!/usr/bin/python3
"""Acceptance run of the Arvados Python SDK's KeepClient against keepfn hosts.

Run it through `npm run test:arvados-python` (test/clients/python-client.ts), which starts
the hosts, writes the settings file and passes its path here:

    arvados_keepclient.py SETTINGS.json [posix|functions|lambda|two|tls ...]

Environment:
    ARVADOS_PYTHON_SDK  the directory holding arvados/ (keep.py of arvados/arvados; see
                        test/clients/README.md for which files)

SETTINGS.json (written by the runner; every URL ends in "/"):
    {
      "admin_token": "...",                     # the hosts' admin (system root) token
      "trash_signing_ttl": 2,                   # blob signing TTL (s) of the trash instances
      "lambda_max_body": 4706304,               # largest PUT body the Lambda host takes
      "hosts": {
        "posix":     {"url": ..., "trash": ..., "copies": 1},
        "functions": {"url": ..., "trash": ..., "copies": 2},
        "lambda":    {"url": ..., "trash": ..., "copies": 2}
      },
      "posix_b": "...",                         # a second container host, its own volume
      "posix_tls": {"url": "https://...", "ca": "/path/cert.pem"},  # a container host serving TLS
      "posix_volumes": ["/dir/of/posix", "/dir/of/posix_b"]
    }

Each "url" host enforces permissions with the runner's signing key; each "trash" host is a
second instance with permissions off, a short signing TTL and trash enabled (1 h lifetime).

Data-path calls go through arvados.KeepClient(api_token=..., proxy=...); index, trash and
untrash (which the SDK has no calls for) go through urllib with the admin token. Exit status
0 only if every check passed and every check ran.
"""
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

SDK = os.environ.get("ARVADOS_PYTHON_SDK", "")
if not os.path.isfile(os.path.join(SDK, "arvados", "keep.py")):
    sys.exit("ARVADOS_PYTHON_SDK must name the directory holding arvados/keep.py (see test/clients/README.md)")
if len(sys.argv) < 2:
    sys.exit(__doc__)
sys.path.insert(0, SDK)
import arvados  # noqa: E402
import arvados.errors  # noqa: E402
from keep_errors import statuses  # noqa: E402  (beside this file)

with open(sys.argv[1]) as f:
    SETTINGS = json.load(f)
ADMIN = SETTINGS["admin_token"]
# A v2 token shaped like the API server's: keepfn signs locators with it and never looks it up.
TOKEN = "v2/zzzzz-gj3su-" + "".join(random.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(15)) + "/" + os.urandom(20).hex()
OTHER = "othertoken" + os.urandom(16).hex()
MiB = 1 << 20
LAMBDA_MAX = SETTINGS["lambda_max_body"]

HOSTS = {
    name: dict(url=h["url"], trash=h["trash"], copies=h["copies"], lambda_=(name == "lambda"))
    for name, h in SETTINGS["hosts"].items()
}
POSIX_B = SETTINGS["posix_b"]
POSIX_VOLUMES = SETTINGS["posix_volumes"]
# How many checks each part has: a check skipped because an earlier step broke is a failure too.
EXPECTED = {"posix": 35, "functions": 35, "lambda": 36, "posix x2": 3, "posix tls": 4}
POSIX_TLS = SETTINGS["posix_tls"]

results = {}  # host -> [passed, failed]
failures = []
notes = []
timings = {}


def check(host, name, fn):
    r = results.setdefault(host, [0, 0])
    t0 = time.time()
    try:
        ok, detail = fn()
    except Exception as e:  # noqa: BLE001
        ok, detail = False, f"raised {e.__class__.__name__}: {e}\n{traceback.format_exc(limit=3)}"
    dt = time.time() - t0
    if ok:
        r[0] += 1
        print(f"  PASS [{host}] {name} ({dt:.2f}s)" + (f" -- {detail}" if detail else ""))
    else:
        r[1] += 1
        failures.append((host, name, detail))
        print(f"  FAIL [{host}] {name} ({dt:.2f}s): {detail}")
    sys.stdout.flush()


def kc(url, token=TOKEN, **kw):
    return arvados.KeepClient(api_token=token, proxy=url, **kw)


def expect_read_refused(url, loc, token, want_status, method="get"):
    # A refusal must be a KeepReadError carrying the status, not a NotFoundError: the SDK
    # would otherwise tell the user the block is gone.
    c = kc(url, token)
    try:
        r = getattr(c, method)(loc, num_retries=0)
    except arvados.errors.NotFoundError as e:
        return False, f"raised NotFoundError (want KeepReadError {want_status}): {statuses(e)} {e}"
    except arvados.errors.KeepReadError as e:
        st = statuses(e)
        return (st == [want_status]), f"KeepReadError statuses={st}"
    return False, f"{method} succeeded ({type(r).__name__} {len(r) if isinstance(r, bytes) else r!r}) but should be refused"


def http(method, url, token=None, body=None, headers=None, timeout=120):
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def blob(n):
    if n == 0:
        return b""
    # Distinct bytes per call, so no earlier put (or run) answers for this one.
    seed = os.urandom(16)
    out = bytearray()
    while len(out) < n:
        out += hashlib.sha512(seed + len(out).to_bytes(8, "big")).digest() * 64
    return bytes(out[:n])


SIGNED_RE = re.compile(r"^([0-9a-f]{32})\+(\d+)\+A([0-9a-f]{40})@([0-9a-f]{8})$")


def run_host(name, cfg):
    url, copies = cfg["url"], cfg["copies"]
    print(f"\n=== {name} ({url}) ===")
    # Lambda: the largest body one invocation carries; larger blocks go in two steps (below).
    sizes = [0, 3, 1024, MiB + 1, 64 * MiB] if not cfg["lambda_"] else [0, 3, 1024, MiB + 1, LAMBDA_MAX]
    stored = {}
    for n in sizes:
        data = blob(n)
        md5 = hashlib.md5(data).hexdigest()
        box = {}

        def put(data=data, md5=md5, n=n, box=box):
            t0 = time.time()
            loc = kc(url).put(data, copies=copies)
            box["t_put"] = time.time() - t0
            box["loc"] = loc
            m = SIGNED_RE.match(loc or "")
            return bool(m and m.group(1) == md5 and int(m.group(2)) == n), f"locator={loc}"

        def get(data=data, box=box):
            t0 = time.time()
            got = kc(url).get(box["loc"])
            box["t_get"] = time.time() - t0
            return got == data, f"got {len(got)} B, md5 {hashlib.md5(got).hexdigest()}"

        def head(box=box):
            t0 = time.time()
            r = kc(url).head(box["loc"])
            box["t_head"] = time.time() - t0
            return r is True, f"head -> {r!r}"

        check(name, f"put {n} B returns signed +A locator", put)
        if "loc" in box:
            check(name, f"get {n} B", get)
            check(name, f"head {n} B", head)
            stored[n] = box["loc"]
        if n == 64 * MiB:
            timings[name] = (box.get("t_put"), box.get("t_get"), box.get("t_head"))

    loc3 = stored.get(3)

    def reput():
        d = blob(3)
        first = kc(url).put(d, copies=copies)
        second = kc(url).put(d, copies=copies)
        ok = SIGNED_RE.match(second) and second.split("+")[0] == first.split("+")[0] and kc(url).get(second) == d
        return bool(ok), f"first={first} second={second}"
    check(name, "re-put of a stored block", reput)

    def classes():
        d = blob(10)
        loc = kc(url).put(d, copies=copies, classes=["default"])
        return bool(SIGNED_RE.match(loc or "")) and kc(url).get(loc) == d, f"locator={loc}"
    check(name, 'put(classes=["default"])', classes)

    # The SDK asks for 2 copies unless told otherwise: one POSIX volume reports 1 replica, so
    # that put must fail; the cloud volumes report enough.
    def default_copies():
        d = blob(11)
        c = kc(url)
        t0 = time.time()
        try:
            loc = c.put(d)
        except arvados.errors.KeepWriteError as e:
            return (name == "posix"), f"KeepWriteError after {time.time()-t0:.1f}s: {e}"
        return (name != "posix") and bool(SIGNED_RE.match(loc)), f"default copies=2 -> {loc}"
    check(name, "put() with default copies=2 " + ("fails (volume reports 1 replica)" if name == "posix" else "succeeds"), default_copies)

    if loc3:
        def refresh():
            r = kc(url).refresh_signature(loc3)
            return r is True or (isinstance(r, str) and SIGNED_RE.match(r)), f"refresh_signature -> {r!r}"
        check(name, "refresh_signature", refresh)

        # KeepClient() with no arguments, as arv-put and friends build it: configured only by
        # the environment (no API host, so ARVADOS_KEEP_SERVICES is the whole service list).
        def from_env():
            code = (
                f"import sys; sys.path.insert(0, {SDK!r}); import arvados, os\n"
                "c = arvados.KeepClient()\n"
                "d = os.urandom(7)\n"
                f"loc = c.put(d, copies={copies})\n"
                "assert c.get(loc) == d and c.head(loc) is True, loc\n"
                "print(loc)\n"
            )
            env = dict(os.environ, ARVADOS_KEEP_SERVICES=url, ARVADOS_API_TOKEN=TOKEN)
            env.pop("ARVADOS_API_HOST", None)
            p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
            out = p.stdout.strip()
            return p.returncode == 0 and bool(SIGNED_RE.match(out)), f"rc={p.returncode} out={out!r} err={p.stderr.strip()[-300:]!r}"
        check(name, "KeepClient() configured from ARVADOS_KEEP_SERVICES/ARVADOS_API_TOKEN", from_env)

        m = SIGNED_RE.match(loc3)
        sig = m.group(3)
        bad = sig[:-1] + ("0" if sig[-1] != "0" else "1")
        tampered = loc3.replace(sig, bad)
        unsigned = f"{m.group(1)}+{m.group(2)}"
        check(name, "get with tampered signature refused (400)", lambda: expect_read_refused(url, tampered, TOKEN, 400))
        check(name, "get with no signature refused (400)", lambda: expect_read_refused(url, unsigned, TOKEN, 400))
        check(name, "head with no signature refused (400)", lambda: expect_read_refused(url, unsigned, TOKEN, 400, "head"))
        check(name, "get with another token refused (400)", lambda: expect_read_refused(url, loc3, OTHER, 400))
        check(name, "get with empty token refused (401)", lambda: expect_read_refused(url, loc3, "", 401))

    def refused_413(n):
        """A put of n bytes must fail with exactly one 413 from the service."""
        d = blob(n)
        t0 = time.time()
        try:
            loc = kc(url).put(d, copies=copies)
        except arvados.errors.KeepWriteError as e:
            st = statuses(e)
            return st == [413], f"KeepWriteError statuses={st} after {time.time()-t0:.2f}s"
        return False, f"put succeeded: {loc}"

    if not cfg["lambda_"]:
        check(name, "put of 64 MiB + 1 B refused (413)", lambda: refused_413(64 * MiB + 1))
    else:
        check(name, "put of 64 MiB refused (413, Lambda request limit)", lambda: refused_413(64 * MiB))

        def lambda_over():
            d = blob(LAMBDA_MAX + 1)
            try:
                loc = kc(url).put(d, copies=copies)
            except arvados.errors.KeepWriteError as e:
                return True, f"KeepWriteError statuses={statuses(e)}"
            return True, f"(info) {LAMBDA_MAX + 1:,} B accepted: {loc}"
        # Informational: where the limit is, not counted as a check.
        try:
            _, det = lambda_over()
            notes.append(f"[lambda] {LAMBDA_MAX + 1:,} B put: {det}")
        except Exception as e:  # noqa: BLE001
            notes.append(f"[lambda] {LAMBDA_MAX + 1:,} B put raised {e!r}")

        # The SDK has no two-step upload: do it by hand, then read through the SDK.
        def two_step():
            d = blob(64 * MiB)
            md5 = hashlib.md5(d).hexdigest()
            st, body, _ = http("POST", f"{url}uploads/{md5}+{len(d)}", token=TOKEN)
            if st != 200:
                return False, f"POST /uploads -> {st} {body[:300]!r}"
            j = json.loads(body)
            h = dict(j["headers"])
            st2, b2, _ = http(j.get("method", "PUT"), j["upload_url"], body=d, headers=h, timeout=300)
            if st2 // 100 != 2:
                return False, f"PUT upload_url -> {st2} {b2[:300]!r}"
            commit = urllib.parse.urljoin(url, j["commit_url"])
            st3, b3, h3 = http(j.get("commit_method", "POST"), commit, token=TOKEN, timeout=300)
            loc = b3.decode().strip()
            if st3 != 200 or not SIGNED_RE.match(loc):
                return False, f"commit -> {st3} {b3[:300]!r}"
            got = kc(url).get(loc)
            hd = kc(url).head(loc)
            replicas = {k.lower(): v for k, v in h3.items()}.get("x-keep-replicas-stored")
            return got == d and hd is True, f"locator={loc} get {len(got)} B head={hd!r} replicas={replicas}"
        check(name, "64 MiB via two-step upload, then SDK get/head through the streaming handler", two_step)

    def index_full():
        st, body, _ = http("GET", f"{url}index", token=ADMIN)
        text = body.decode()
        want = [loc.split("+A")[0] for loc in stored.values()]
        lines = text.split("\n")
        have = {ln.split(" ")[0] for ln in lines if ln}
        missing = [w for w in want if w not in have]
        ok = st == 200 and text.endswith("\n\n") and not missing and all(
            re.match(r"^[0-9a-f]{32}\+\d+ \d+$", ln) for ln in lines[:-2])
        return ok, f"status={st} lines={len(have)} missing={missing} ends_with_marker={text.endswith(chr(10)*2)}"
    check(name, "index (full, end marker, lists stored blocks)", index_full)

    def index_prefix():
        loc = stored.get(1024) or next(iter(stored.values()))
        pfx = loc[:3]
        st, body, _ = http("GET", f"{url}index/{pfx}", token=ADMIN)
        text = body.decode()
        lines = [ln for ln in text.split("\n") if ln]
        ok = st == 200 and text.endswith("\n\n") and lines and all(ln.startswith(pfx) for ln in lines) and any(
            ln.startswith(loc.split("+A")[0] + " ") for ln in lines)
        return bool(ok), f"status={st} prefix={pfx} lines={len(lines)}"
    check(name, "index by prefix", index_prefix)

    def index_noauth():
        st, body, _ = http("GET", f"{url}index")
        return st == 401, f"status={st} body={body[:80]!r}"
    check(name, "index without token -> 401", index_noauth)

    def index_badauth():
        st, body, _ = http("GET", f"{url}index", token=TOKEN)
        return st == 403, f"status={st} body={body[:80]!r}"
    check(name, "index with a non-admin token -> 403", index_badauth)

    # Trash list and untrash on the second instance (permissions off, short signing TTL).
    turl = cfg["trash"]

    def trash_untrash():
        d = blob(2000)
        c = kc(turl)
        loc = c.put(d, copies=copies)
        bare = "+".join(loc.split("+")[:2])
        # A block newer than the signing TTL is never trashed (its signature may still be in use).
        time.sleep(SETTINGS["trash_signing_ttl"] + 1.5)
        st, body, _ = http("GET", f"{turl}index/{bare[:32]}", token=ADMIN)
        lines = [ln for ln in body.decode().split("\n") if ln.startswith(bare + " ")]
        if st != 200 or not lines:
            return False, f"index for {bare}: {st} {body[:200]!r}"
        mtime = int(lines[0].split(" ")[1])
        st, body, _ = http("PUT", f"{turl}trash", token=ADMIN,
                           body=json.dumps([{"locator": bare, "block_mtime": mtime}]).encode(),
                           headers={"Content-Type": "application/json"})
        if st != 200:
            return False, f"PUT /trash -> {st} {body[:200]!r}"
        # The trash list is worked off in the background: poll until the block is gone.
        deadline = time.time() + 30
        gone = None
        while time.time() < deadline:
            try:
                kc(turl).get(loc, num_retries=0)
            except arvados.errors.NotFoundError as e:
                gone = e
                break
            time.sleep(0.5)
        if gone is None:
            return False, "block still readable 30 s after the trash list"
        st, body, _ = http("PUT", f"{turl}untrash/{bare}", token=ADMIN)
        if st != 200:
            return False, f"after trash: NotFoundError OK; PUT /untrash -> {st} {body[:200]!r}"
        got = kc(turl).get(loc)
        return got == d, f"trash list -> get NotFoundError ({statuses(gone)}); untrash {st}; get after untrash {len(got)} B"
    check(name, "trash list -> NotFoundError, untrash -> readable again", trash_untrash)

    def trash_noauth():
        st, _, _ = http("PUT", f"{turl}trash", body=b"[]")
        st2, _, _ = http("PUT", f"{turl}trash", token=TOKEN, body=b"[]")
        return st == 401 and st2 == 403, f"no token {st}, wrong token {st2}"
    check(name, "trash list without/with a wrong token -> 401/403", trash_noauth)

    # Federation: blocks of cluster xyzzy (a second keepfn behind a stand-in API server),
    # read through this host with the home token, as a client of a federated cluster does.
    fed = SETTINGS["federation"]

    def fed_get():
        for b in fed["blocks"]:
            got = kc(url, token=fed["token"]).get(b["locator"])
            if hashlib.md5(got).hexdigest() != b["locator"][:32]:
                return False, f"{b['locator']}: got {len(got)} B, md5 {hashlib.md5(got).hexdigest()}"
        return True, f"{len(fed['blocks'])} +R blocks ({', '.join(str(b['size']) for b in fed['blocks'])} B)"
    check(name, "get() of +R locators (another cluster's blocks)", fed_get)

    def fed_refresh():
        b = fed["blocks"][-1]
        local = kc(url, token=fed["token"]).refresh_signature(b["locator"])
        m = SIGNED_RE.match(local or "")
        if not m or "+R" in local or m.group(1) != b["locator"][:32]:
            return False, f"refresh_signature -> {local!r}"
        got = kc(url, token=fed["token"]).get(local)
        return hashlib.md5(got).hexdigest() == m.group(1), f"local locator {local[:60]}..., get {len(got)} B"
    check(name, "refresh_signature() of a +R locator: a local +A locator that reads", fed_refresh)

    def fed_v1():
        try:
            kc(url, token=OTHER).get(fed["blocks"][0]["locator"], num_retries=0)
        except arvados.errors.KeepReadError as e:
            return 400 in statuses(e), f"KeepReadError {statuses(e)}"
        return False, "read succeeded with a v1 token"
    check(name, "+R read with a v1 token is refused (400: it cannot be salted)", fed_v1)


def run_two_services():
    name = "posix x2"
    print("\n=== two container hosts as two services ===")
    services = f"{HOSTS['posix']['url']} {POSIX_B}"

    def copies2():
        d = blob(5000)
        md5 = hashlib.md5(d).hexdigest()
        loc = kc(services).put(d)  # default copies=2: one on each service
        on = [os.path.exists(os.path.join(v, md5[:3], md5)) for v in POSIX_VOLUMES]
        return bool(SIGNED_RE.match(loc)) and all(on), f"locator={loc} on both volumes={on}"
    check(name, "put() default copies=2 stores one copy on each volume", copies2)

    def copies3():
        d = blob(5001)
        t0 = time.time()
        try:
            loc = kc(services).put(d, copies=3)
        except arvados.errors.KeepWriteError as e:
            return True, f"KeepWriteError after {time.time()-t0:.1f}s: {str(e)[:200]}"
        return False, f"put succeeded: {loc}"
    check(name, "put(copies=3) fails with KeepWriteError", copies3)

    def read_either():
        d = blob(5002)
        loc = kc(services).put(d)
        return kc(services).get(loc) == d and kc(services).head(loc) is True, f"locator={loc}"
    check(name, "get/head through the two services", read_either)


def run_tls():
    name = "posix tls"
    print("\n=== a container host serving TLS (an https:// InternalURL) ===")
    url = POSIX_TLS["url"]
    # arvados.util.ca_certs_path() takes SSL_CERT_FILE first: the SDK then verifies the
    # server's certificate against the test CA, as it would a cluster's own CA.
    os.environ["SSL_CERT_FILE"] = POSIX_TLS["ca"]
    try:
        def small():
            d = blob(4096)
            loc = kc(url).put(d, copies=1)
            return bool(SIGNED_RE.match(loc)) and kc(url).get(loc) == d and kc(url).head(loc) is True, f"locator={loc}"
        check(name, "put, get and head of a small block over HTTPS, the certificate verified", small)

        def empty():
            loc = kc(url).put(b"", copies=1)
            return loc.startswith("d41d8cd98f00b204e9800998ecf8427e+0+A") and kc(url).get(loc) == b"", f"locator={loc}"
        check(name, "put and get of the empty block over HTTPS", empty)

        def big():
            d = os.urandom(64 * MiB)
            t0 = time.time()
            loc = kc(url).put(d, copies=1)
            ok = kc(url).get(loc) == d
            return ok, f"64 MiB put + get in {time.time() - t0:.2f}s"
        check(name, "put and get of a 64 MiB block over HTTPS", big)

        def untrusted():
            # Without the test CA the SDK must refuse the server: the check above was real.
            del os.environ["SSL_CERT_FILE"]
            try:
                loc = kc(url).put(blob(10), copies=1, num_retries=0)
            except arvados.errors.KeepWriteError as e:
                return True, f"KeepWriteError: {str(e)[:160]}"
            return False, f"put succeeded without trusting the certificate: {loc}"
        check(name, "an untrusted certificate is refused by the SDK", untrusted)
    finally:
        os.environ.pop("SSL_CERT_FILE", None)


def main():
    import pycurl
    print("pycurl:", pycurl.version)
    print("python:", sys.version.split()[0])
    t0 = time.time()
    only = sys.argv[2:] or list(HOSTS) + ["two", "tls"]
    for name, cfg in HOSTS.items():
        if name in only:
            run_host(name, cfg)
    if "two" in only:
        run_two_services()
    if "tls" in only:
        run_tls()
    print("\n=== summary ===")
    tp = tf = 0
    for h, (p, f) in results.items():
        print(f"{h:10s} passed {p:3d} failed {f:3d}")
        tp += p
        tf += f
    print(f"{'total':10s} passed {tp:3d} failed {tf:3d}   ({time.time()-t0:.1f}s)")
    for h, t in timings.items():
        if all(x is not None for x in t):
            print(f"64 MiB via {h}: put {t[0]:.2f}s get {t[1]:.2f}s head {t[2]:.2f}s total {sum(t):.2f}s")
    for n in notes:
        print("note:", n)
    wanted = (
        [h for h in HOSTS if h in only]
        + (["posix x2"] if "two" in only else [])
        + (["posix tls"] if "tls" in only else [])
    )
    short = [f"{h}: {sum(results.get(h, [0, 0]))} of {EXPECTED[h]} checks ran"
             for h in wanted if sum(results.get(h, [0, 0])) != EXPECTED[h]]
    if failures:
        print("\nFAILURES:")
        for h, n, d in failures:
            print(f"- [{h}] {n}: {d}")
    for s in short:
        print("INCOMPLETE:", s)
    return 1 if failures or short else 0


if __name__ == "__main__":
    sys.exit(main())
