#!/usr/bin/python3
"""The Arvados Python SDK's API client and Keep client against keepfn, through an Arvados API
server of ours (test/clients/arvados-api-stub.ts).

Run it through `npm run test:arvados-cli` (test/clients/arvados-cli.ts), which starts the
keepfn hosts and the API stubs, writes the settings file and passes its path here:

    arvados_cli.py SETTINGS.json [posix|functions ...]

Environment:
    ARVADOS_PYTHON_SDK  the directory holding arvados/ (see test/clients/README.md)

SETTINGS.json:
    {
      "users": [{"token": ..., "uuid": ...}, {"token": ..., "uuid": ...}],
      "admin_token": "...",
      "work": "/tmp/...",                      # scratch directory (fixtures, downloads)
      "backends": {"posix": {"keep": ["http://127.0.0.1:P/"], "api": "127.0.0.1:Q"},
                   "functions": {...},
                   "two": {"keep": [posix, posix-b], "api": ...}},
      "two_volumes": ["/dir/of/posix", "/dir/of/posix-b"]
    }

Each backend (posix, functions) is one keepfn host enforcing permissions and one API stub that
lists it in keep_services/accessible; "two" is a stub listing both container hosts, as a
cluster with two keepstores lists them, and signs manifests with the host's key. Every client here is built
the way the Arvados tools build theirs: arvados.api('v1', host=..., token=..., insecure=True)
fetches our discovery document over HTTPS and googleapiclient makes the REST calls; its
KeepClient finds keepfn through keep_services/accessible. What arv-put does with those (cut
files into 64 MiB blocks, KeepClient.put each, write the manifest, collections().create) and
what arv-get does (collections().get, KeepClient.get of each re-signed locator) is done here
by this script: when ARVADOS_PYTHON_SDK also holds the real arv-put and arv-get
(arvados/commands/put.py and get.py), the "tools" part runs those unchanged as well.

Prints one PASS/FAIL/SKIP line per check and ends with "N passed, N failed, N skipped".
Exit status 0 only if nothing failed.
"""
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

SDK = os.environ.get("ARVADOS_PYTHON_SDK", "")
if not os.path.isfile(os.path.join(SDK, "arvados", "api.py")):
    sys.exit("ARVADOS_PYTHON_SDK must name the directory holding arvados/api.py (see test/clients/README.md)")
if len(sys.argv) < 2:
    sys.exit(__doc__)
sys.path.insert(0, SDK)
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))
import googleapiclient_compat  # noqa: E402  (before arvados.api: see that file)
import arvados  # noqa: E402
import arvados.api  # noqa: E402
import arvados.errors  # noqa: E402
from keep_errors import statuses  # noqa: E402
import arvados.keep  # noqa: E402

with open(sys.argv[1]) as f:
    SETTINGS = json.load(f)
USER, OTHER = SETTINGS["users"]
WORK = SETTINGS["work"]
BACKENDS = SETTINGS["backends"]
MiB = 1 << 20
BLOCK = 64 * MiB
EMPTY_LOCATOR = "d41d8cd98f00b204e9800998ecf8427e+0"
HAVE_TOOLS = all(
    os.path.isfile(os.path.join(SDK, "arvados", p))
    for p in ("commands/put.py", "commands/get.py", "collection.py", "arvfile.py")
) and "NotImplementedError" not in open(os.path.join(SDK, "arvados", "collection.py")).read()

counts = {"passed": 0, "failed": 0, "skipped": 0}
notes = []


def check(part, name, fn):
    t = time.time()
    try:
        note = fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
        counts["failed"] += 1
        print(f"FAIL [{part}] {name}: {type(e).__name__}: {str(e)[:600]}", flush=True)
        tb = traceback.format_exc().strip().splitlines()
        for line in tb[-6:]:
            print(f"       {line}", flush=True)
        return None
    counts["passed"] += 1
    print(f"PASS [{part}] {name} ({time.time() - t:.2f}s){' - ' + note if note else ''}", flush=True)
    return note


def skip(part, name, why):
    counts["skipped"] += 1
    print(f"SKIP [{part}] {name}: {why}", flush=True)


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


# --- the API stub's test controls (not Arvados API) -------------------------------------

_INSECURE = ssl.create_default_context()
_INSECURE.check_hostname = False
_INSECURE.verify_mode = ssl.CERT_NONE


def stub_call(api_host, path, body=None):
    req = urllib.request.Request(
        f"https://{api_host}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, context=_INSECURE, timeout=30) as r:
        return json.loads(r.read())


def stub_requests(api_host):
    return stub_call(api_host, "/_stub/requests")


def stub_sign(api_host, mode):
    stub_call(api_host, "/_stub/sign", {"mode": mode})


# --- clients, built as the tools build them ----------------------------------------------


def api_client(api_host, token=USER["token"]):
    """A fresh API client (and with it a fresh KeepClient and block cache), like a new process."""
    return arvados.api("v1", host=api_host, token=token, insecure=True, cache=False)


# --- what arv-put and arv-get do with those clients --------------------------------------


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def walk_files(root, prefix="."):
    """(stream, name, path) of every file under root, sorted like a normalized manifest."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        stream = prefix if rel == "." else f"{prefix}/{rel}"
        for name in sorted(filenames):
            out.append((stream, name, os.path.join(dirpath, name)))
    return out


def upload(api, files, copies=1):
    """Each stream's files packed back to back into 64 MiB blocks, as arv-put packs them.
    Returns the manifest text with the signed locators KeepClient.put returned."""
    kc = api.keep
    streams = {}
    for stream, name, path in files:
        streams.setdefault(stream, []).append((name, path))
    lines = []
    for stream in sorted(streams):
        locators, tokens, buf, pos = [], [], bytearray(), 0
        for name, path in streams[stream]:
            start = pos
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(BLOCK - len(buf))
                    if not chunk:
                        break
                    buf += chunk
                    pos += len(chunk)
                    if len(buf) == BLOCK:
                        locators.append(kc.put(bytes(buf), copies=copies))
                        buf = bytearray()
            tokens.append(f"{start}:{pos - start}:{name}")
        if buf:
            locators.append(kc.put(bytes(buf), copies=copies))
        if not locators:
            locators.append(EMPTY_LOCATOR)  # what the SDK writes for a stream of empty files
        lines.append(" ".join([stream, *locators, *tokens]) + "\n")
    return "".join(lines)


def strip(manifest):
    out = []
    for line in manifest.splitlines():
        toks = line.split(" ")
        out.append(" ".join(toks[:1] + [_strip_loc(t) for t in toks[1:]]))
    return "".join(f"{l}\n" for l in out if l)


def _strip_loc(tok):
    if arvados.util.keep_locator_pattern.fullmatch(tok):
        parts = tok.split("+")
        return "+".join(p for p in parts if not p.startswith("A") and not p.startswith("R"))
    return tok


def portable_data_hash(manifest):
    s = strip(manifest).encode()
    return f"{hashlib.md5(s).hexdigest()}+{len(s)}"


def parse_manifest(manifest):
    """{path: [(locator, offset_in_block, length), ...]} for every file."""
    files = {}
    for line in manifest.splitlines():
        toks = line.split(" ")
        stream, rest = toks[0], toks[1:]
        blocks = []
        while rest and arvados.util.keep_locator_pattern.fullmatch(rest[0]):
            blocks.append(rest.pop(0))
        starts, p = [], 0
        for loc in blocks:
            starts.append(p)
            p += int(loc.split("+")[1])
        for tok in rest:
            pos, length, name = tok.split(":", 2)
            pos, length = int(pos), int(length)
            segs = []
            for loc, bstart in zip(blocks, starts):
                bsize = int(loc.split("+")[1])
                lo, hi = max(pos, bstart), min(pos + length, bstart + bsize)
                if lo < hi:
                    segs.append((loc, lo - bstart, hi - lo))
            path = name if stream == "." else f"{stream[2:]}/{name}"
            files[path] = segs
    return files


def download(api, manifest, dest, only=None):
    """Every file (or the one named `only`) of the manifest into dest, block by block through
    KeepClient.get. Returns {path: sha256}."""
    kc = api.keep
    got = {}
    for path, segs in parse_manifest(manifest).items():
        if only is not None and path != only:
            continue
        out = os.path.join(dest, path)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        h = hashlib.sha256()
        with open(out, "wb") as f:
            for loc, off, n in segs:
                data = kc.get(loc)
                expect(len(data) == int(loc.split("+")[1]), f"{loc}: got {len(data)} bytes")
                piece = data[off : off + n]
                f.write(piece)
                h.update(piece)
        got[path] = h.hexdigest()
    return got


# --- fixtures ---------------------------------------------------------------------------


def make_fixtures():
    root = os.path.join(WORK, "fixtures")
    os.makedirs(root, exist_ok=True)
    fx = {}

    def write(rel, data):
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        return p

    fx["small"] = write("small/hello.txt", b"hello from arv-put through keepfn\n")
    fx["empty"] = write("empty/empty.dat", b"")
    big = os.path.join(root, "big/random-150MiB.bin")
    os.makedirs(os.path.dirname(big), exist_ok=True)
    with open(big, "wb") as f:
        for _ in range(150):
            f.write(os.urandom(MiB))
    fx["big"] = big
    tree = os.path.join(root, "tree")
    write("tree/README", b"a directory tree of several files\n")
    write("tree/data/one.bin", os.urandom(MiB + 3))
    write("tree/data/two.txt", b"two\n" * 1000)
    write("tree/data/nested/three.bin", os.urandom(5 * MiB))
    write("tree/data/nested/zero-length", b"")
    write("tree/logs/run.log", b"".join(b"line %d\n" % i for i in range(20000)))
    fx["tree"] = tree
    return fx


def sha_map(files, root=None):
    """{manifest path: sha256} of the local files as arv-put names them."""
    out = {}
    for stream, name, path in files:
        rel = name if stream == "." else f"{stream[2:]}/{name}"
        out[rel] = sha256_file(path)
    return out


# --- one backend: keepfn host + API stub --------------------------------------------------


def run_backend(part, cfg, fx):
    api_host = cfg["api"]
    copies = 1  # what arv-put --replication 1 asks KeepClient for
    state = {}

    def discovery():
        api = api_client(api_host)
        me = api.users().current().execute()
        expect(me["uuid"] == USER["uuid"], f"users/current: {me}")
        state["api"] = api
        return f"users/current -> {me['uuid']}"

    if check(part, "API client built from our discovery document (HTTPS, googleapiclient)", discovery) is None:
        return

    def from_env():
        saved = {k: os.environ.get(k) for k in ("ARVADOS_API_HOST", "ARVADOS_API_TOKEN", "ARVADOS_API_HOST_INSECURE")}
        os.environ.update(ARVADOS_API_HOST=api_host, ARVADOS_API_TOKEN=USER["token"], ARVADOS_API_HOST_INSECURE="1")
        try:
            arvados.config.initialize()
            api = arvados.api("v1", cache=False)
            expect(api.users().current().execute()["uuid"] == USER["uuid"], "wrong user")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            arvados.config.initialize()

    check(part, "arvados.api('v1') configured only by ARVADOS_API_HOST/TOKEN/HOST_INSECURE", from_env)

    def keep_discovery():
        kc = state["api"].keep
        loc = kc.put(b"service discovery probe", copies=copies)
        roots = kc.weighted_service_roots(arvados.keep.KeepLocator(loc))
        expect(roots == cfg["keep"], f"service roots {roots}, want {cfg['keep']}")
        expect("+A" in loc, f"unsigned locator {loc}")
        seen = {(r["method"], r["path"].split("?")[0]) for r in stub_requests(api_host)}
        for want in [("GET", "/arvados/v1/keep_services/accessible"), ("GET", "/arvados/v1/config")]:
            expect(want in seen, f"the SDK never sent {want}")
        return f"root {roots[0]}, {loc[:40]}..."

    check(part, "KeepClient finds keepfn through keep_services/accessible and puts a signed block", keep_discovery)

    collections = {}
    for key, label in [
        ("small", "(a) a small file"),
        ("empty", "(b) an empty file"),
        ("big", "(c) 150 MiB of random bytes (three blocks)"),
        ("tree", "(d) a directory tree of six files in four streams"),
    ]:

        def put(key=key):
            api = api_client(api_host)
            path = fx[key]
            files = walk_files(path) if os.path.isdir(path) else [(".", os.path.basename(path), path)]
            manifest = upload(api, files, copies=copies)
            rec = (
                api.collections()
                .create(
                    body={"collection": {"manifest_text": manifest, "name": f"{part} {key}", "replication_desired": copies}},
                    ensure_unique_name=True,
                )
                .execute()
            )
            expect(rec["portable_data_hash"] == portable_data_hash(manifest), f"pdh {rec['portable_data_hash']}")
            nblocks = sum(1 for t in strip(manifest).split() if arvados.util.keep_locator_pattern.fullmatch(t))
            collections[key] = dict(rec=rec, want=sha_map(files))
            return f"{rec['uuid']} {rec['portable_data_hash']}, {nblocks} block(s)"

        check(part, f"put {label}: blocks through KeepClient, collections.create verifies their signatures", put)

    for key, c in collections.items():
        for by in ("uuid", "portable_data_hash"):

            def get(c=c, by=by, key=key):
                api = api_client(api_host)
                rec = api.collections().get(uuid=c["rec"][by]).execute()
                dest = os.path.join(WORK, "get", part, key, by)
                got = download(api, rec["manifest_text"], dest)
                expect(got == c["want"], f"sha256 differ: {got} vs {c['want']}")
                for rel in c["want"]:  # and byte for byte
                    src = os.path.join(fx[key], rel) if os.path.isdir(fx[key]) else fx[key]
                    r = subprocess.run(["cmp", src, os.path.join(dest, rel)], capture_output=True)
                    expect(r.returncode == 0, f"cmp {rel}: {r.stdout!r}")
                shutil.rmtree(dest)
                return f"{len(got)} file(s) identical (sha256, cmp)"

            check(part, f"get {key} by {by}: collections.get re-signs, KeepClient reads every block", get)

    def one_file():
        c = collections["tree"]
        api = api_client(api_host)
        rec = api.collections().get(uuid=c["rec"]["uuid"]).execute()
        dest = os.path.join(WORK, "get", part, "one")
        got = download(api, rec["manifest_text"], dest, only="data/nested/three.bin")
        expect(got == {"data/nested/three.bin": c["want"]["data/nested/three.bin"]}, f"{got}")
        expect(sorted(os.listdir(dest)) == ["data"], "more than the one file was written")
        shutil.rmtree(dest)

    check(part, "get a single file (data/nested/three.bin) out of the tree collection", one_file)

    def raw():
        # arv-put --raw: blocks stored, their locators printed, no manifest, no collection.
        api = api_client(api_host)
        before = len(stub_requests(api_host))
        data = open(fx["tree"] + "/data/one.bin", "rb").read()
        locs = [api.keep.put(data[i : i + BLOCK], copies=copies) for i in range(0, len(data), BLOCK)]
        fresh = api_client(api_host)
        expect(b"".join(fresh.keep.get(l) for l in locs) == data, "raw read back differs")
        posts = [r for r in stub_requests(api_host)[before:] if r["method"] == "POST"]
        expect(not posts, f"raw created something: {posts}")
        return ",".join(l[:20] + "..." for l in locs)

    check(part, "raw (arv-put --raw): locators only, read back, no collection created", raw)

    def stream():
        # arv-put --stream: blocks stored, manifest printed, no collection created.
        api = api_client(api_host)
        before = len(stub_requests(api_host))
        files = walk_files(fx["tree"] + "/logs")
        manifest = upload(api, files, copies=copies)
        got = download(api_client(api_host), manifest, os.path.join(WORK, "get", part, "stream"))
        expect(got == sha_map(files), "stream read back differs")
        posts = [r for r in stub_requests(api_host)[before:] if r["method"] == "POST"]
        expect(not posts, f"stream created something: {posts}")

    check(part, "stream (arv-put --stream): manifest only, read back, no collection created", stream)

    def create_refused(mangle, want):
        def run():
            api = api_client(api_host)
            loc = api.keep.put(os.urandom(1000), copies=copies)
            manifest = f". {mangle(loc)} 0:1000:x.bin\n"
            try:
                api.collections().create(body={"collection": {"manifest_text": manifest}}).execute()
            except arvados.errors.ApiError as e:
                expect(e.resp.status == 422, f"status {e.resp.status}")
                expect(want in str(e), f"{e}")
                return f"422 {want}"
            raise AssertionError("collections.create accepted it")

        return run

    check(
        part,
        "collections.create refuses a locator whose signature was tampered with (422)",
        create_refused(_flip_sig, "Invalid signature"),
    )
    check(
        part,
        "collections.create refuses an unsigned locator (422)",
        create_refused(lambda loc: loc.split("+A")[0], "Invalid signature"),
    )

    def read_refused(mode, want_status):
        def run():
            c = collections["small"]
            stub_sign(api_host, mode)
            try:
                api = api_client(api_host)
                rec = api.collections().get(uuid=c["rec"]["uuid"]).execute()
            finally:
                stub_sign(api_host, "valid")
            dest = os.path.join(WORK, "get", part, f"refused-{mode}")
            try:
                download(api, rec["manifest_text"], dest)
            except arvados.errors.KeepReadError as e:
                written = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(dest) for f in fs]
                expect(sum(written) == 0, f"{sum(written)} bytes written before the refusal")
                shutil.rmtree(dest, ignore_errors=True)
                # A refusal, not "not found": the SDK would tell the user the block is gone.
                expect(not isinstance(e, arvados.errors.NotFoundError), f"NotFoundError: {e}")
                got = statuses(e)
                expect(got and all(s == want_status for s in got), f"statuses {got}, want {want_status}")
                return f"KeepReadError, HTTP {got}"
            raise AssertionError("read the data with a manifest whose signatures are not valid")

        return run

    check(part, "a manifest handed out without signatures cannot be read (keepfn: 400)", read_refused("none", 400))
    check(part, "a manifest handed out with bad signatures cannot be read (keepfn: 400)", read_refused("tampered", 400))
    check(part, "a manifest whose signatures have expired cannot be read (keepfn: 401)", read_refused("expired", 401))

    def other_user():
        c = collections["small"]
        mine = api_client(api_host).collections().get(uuid=c["rec"]["uuid"]).execute()["manifest_text"]
        theirs_api = api_client(api_host, OTHER["token"])
        theirs = theirs_api.collections().get(uuid=c["rec"]["uuid"]).execute()["manifest_text"]
        expect(strip(mine) == strip(theirs) and mine != theirs, "not signed per token")
        got = download(theirs_api, theirs, os.path.join(WORK, "get", part, "other-ok"))
        expect(got == c["want"], "other user's own signatures do not read")
        try:
            download(api_client(api_host, OTHER["token"]), mine, os.path.join(WORK, "get", part, "other-bad"))
        except arvados.errors.KeepReadError as e:
            got = statuses(e)
            expect(got and all(s == 400 for s in got), f"statuses {got}, want 400")
            return f"their signatures read; mine with their token: KeepReadError, HTTP {got}"
        raise AssertionError("read with another user's token and my signatures")

    check(part, "signatures are per token: another user reads with theirs, not with mine", other_user)

    def replication2():
        api = api_client(api_host)
        data = os.urandom(4096)
        try:
            loc = api.keep.put(data, copies=2)
        except arvados.errors.KeepWriteError as e:
            if part == "posix":
                return f"KeepWriteError, as it must with 1 replica stored: {str(e)[:100]}"
            raise
        if part == "posix":
            raise AssertionError(f"copies=2 succeeded on one POSIX volume: {loc}")
        return f"stored ({loc[:40]}...): the Blob volume reports 3 replicas"

    want = "fails: one POSIX volume stores 1 replica" if part == "posix" else "succeeds: Azure Blob reports 3 replicas"
    check(part, f"--replication 2 against one host ({want})", replication2)

    def concurrent_same_block(size, n):
        # arv-put's upload threads, or several arv-puts of the same data, PUT one block at once.
        def run():
            data = os.urandom(size)
            clients = [api_client(api_host) for _ in range(n)]
            out, errs = [None] * n, [None] * n
            barrier = threading.Barrier(n)

            def one(i):
                barrier.wait()
                try:
                    out[i] = clients[i].keep.put(data, copies=copies)
                except Exception as e:  # noqa: BLE001
                    errs[i] = e

            threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            expect(not any(errs), f"errors: {[repr(e)[:200] for e in errs if e]}")
            expect(len({o.split('+A')[0] for o in out}) == 1, f"locators {out}")
            # each client sent the block once: none was refused and retried
            sent = [c.keep.upload_counter.get() for c in clients]
            expect(all(b == size for b in sent), f"bytes uploaded per client {sent}, want {size} each")
            for i in (0, n - 1):
                expect(api_client(api_host).keep.get(out[i]) == data, "read back differs")
            return f"{n} PUTs, one locator {out[0][:40]}..."

        return run

    check(part, "8 clients PUT the same 1 KiB block at once: all succeed, it reads back", concurrent_same_block(1024, 8))
    check(part, "4 clients PUT the same 64 MiB block at once: all succeed, it reads back", concurrent_same_block(BLOCK, 4))

    def prefetch():
        # arv-get's KeepClient prefetches the next blocks in its own threads while it reads.
        rec = api_client(api_host).collections().get(uuid=collections["big"]["rec"]["uuid"]).execute()
        api = api_client(api_host)
        locs = [t for t in rec["manifest_text"].split()[1:] if arvados.util.keep_locator_pattern.fullmatch(t)]
        for loc in locs:
            api.keep.block_prefetch(loc)
        h = hashlib.sha256()
        for loc in locs:
            h.update(api.keep.get(loc))
        expect(h.hexdigest() == collections["big"]["want"]["random-150MiB.bin"], "sha256 differs")
        return f"{len(locs)} blocks prefetched and read"

    check(part, "blocks prefetched in the KeepClient's threads, then read (arv-get's read-ahead)", prefetch)

    def no_unhandled():
        bad = [r for r in stub_requests(api_host) if not r["handled"]]
        expect(not bad, f"requests the stub does not implement: {bad}")
        n = len(stub_requests(api_host))
        return f"{n} requests, all implemented"

    check(part, "every API request the SDK made is one the stub implements", no_unhandled)

    if HAVE_TOOLS:
        run_tools(part, cfg, fx)
    else:
        for name in ("arv-put (a)-(d), arv-get by uuid and pdh", "arv-put --raw / --stream", "arv-get refused"):
            skip(part, f"real {name}", "ARVADOS_PYTHON_SDK has no complete arvados.collection/arvfile/commands")


def run_two(part, cfg, fx):
    """Two keepstores in keep_services/accessible: the SDK's default replication of 2 is met
    with one copy on each, as on a real cluster."""
    api_host = cfg["api"]

    def services():
        api = api_client(api_host)
        roots = sorted(api.keep.weighted_service_roots(arvados.keep.KeepLocator("d41d8cd98f00b204e9800998ecf8427e+0")))
        expect(roots == sorted(cfg["keep"]), f"roots {roots}")
        return f"{len(roots)} disk services"

    check(part, "KeepClient finds both keepstores through keep_services/accessible", services)

    def replication2(key):
        def run():
            api = api_client(api_host)
            path = fx[key]
            files = walk_files(path) if os.path.isdir(path) else [(".", os.path.basename(path), path)]
            manifest = upload(api, files, copies=2)
            rec = (
                api.collections()
                .create(body={"collection": {"manifest_text": manifest, "replication_desired": 2}}, ensure_unique_name=True)
                .execute()
            )
            for loc in strip(manifest).split()[1:]:
                if not arvados.util.keep_locator_pattern.fullmatch(loc) or loc == EMPTY_LOCATOR:
                    continue
                md5 = loc[:32]
                on = [os.path.exists(os.path.join(v, md5[:3], md5)) for v in SETTINGS["two_volumes"]]
                expect(all(on), f"{md5} on volumes {on}")
            fresh = api_client(api_host)
            got = download(fresh, fresh.collections().get(uuid=rec["uuid"]).execute()["manifest_text"], os.path.join(WORK, "get", part, key))
            expect(got == sha_map(files), "read back differs")
            shutil.rmtree(os.path.join(WORK, "get", part, key))
            return f"{rec['portable_data_hash']}: every block on both volumes, read back"

        return run

    check(part, "replication 2 of the small file: one copy on each keepstore", replication2("small"))
    check(part, "replication 2 of 150 MiB: one copy of each block on each keepstore", replication2("big"))

    def replication3():
        try:
            loc = api_client(api_host).keep.put(os.urandom(1000), copies=3)
        except arvados.errors.KeepWriteError as e:
            return f"KeepWriteError: {str(e)[:100]}"
        raise AssertionError(f"copies=3 succeeded on two single-volume keepstores: {loc}")

    check(part, "replication 3 on two single-volume keepstores fails (KeepWriteError)", replication3)


def _flip_sig(loc):
    at = loc.index("+A") + 2
    return loc[:at] + ("1" if loc[at] == "0" else "0") + loc[at + 1 :]


def run_tools(part, cfg, fx):
    """The real arv-put and arv-get, unchanged, as subprocesses (only with a full SDK)."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([SDK, os.path.dirname(os.path.abspath(__file__))]),
        ARVADOS_API_HOST=cfg["api"],
        ARVADOS_API_TOKEN=USER["token"],
        ARVADOS_API_HOST_INSECURE="1",
    )

    def tool(module, *args, ok=True):
        r = subprocess.run(
            [sys.executable, "-c", f"import sys, googleapiclient_compat; from arvados.commands.{module} import main; sys.exit(main())", *args],
            env=env,
            capture_output=True,
            timeout=600,
        )
        if ok and r.returncode != 0:
            raise AssertionError(f"arv-{module} {' '.join(args)}: exit {r.returncode}: {r.stderr.decode()[-800:]}")
        return r

    for key in ("small", "empty", "big", "tree"):

        def put_get(key=key):
            # a directory with a trailing slash: its contents at the collection's root
            src = fx[key] + "/" if os.path.isdir(fx[key]) else fx[key]
            out = tool("put", "--no-progress", "--no-resume", "--replication", "1", src).stdout.decode().strip()
            pdh = tool("put", "--no-progress", "--no-resume", "--replication", "1", "--portable-data-hash", src).stdout.decode().strip()
            for ref in (out, pdh):
                dest = os.path.join(WORK, "tools", part, key, ref.replace("+", "_"))
                os.makedirs(dest, exist_ok=True)
                tool("get", ref + "/", dest + "/")
                r = subprocess.run(["diff", "-r", fx[key] if os.path.isdir(fx[key]) else os.path.dirname(fx[key]), dest])
                expect(r.returncode == 0, f"diff -r differs for {ref}")
                shutil.rmtree(dest)
            return f"{out} {pdh}"

        check(part, f"real arv-put + arv-get (by uuid and pdh) of {key}", put_get)

    def raw_stream():
        raw = tool("put", "--no-progress", "--raw", "--replication", "1", fx["small"]).stdout.decode().strip()
        expect(arvados.util.keep_locator_pattern.fullmatch(raw.split(",")[0]), f"--raw printed {raw!r}")
        manifest = tool("put", "--no-progress", "--stream", "--replication", "1", fx["small"]).stdout.decode()
        expect(manifest.startswith(". "), f"--stream printed {manifest!r}")
        return f"{raw[:30]}..., {manifest.strip()[:50]}..."

    check(part, "real arv-put --raw and --stream", raw_stream)

    def get_refused():
        uuid = tool("put", "--no-progress", "--no-resume", "--replication", "1", fx["small"]).stdout.decode().strip()
        stub_sign(cfg["api"], "none")
        try:
            dest = os.path.join(WORK, "tools", part, "refused")
            os.makedirs(dest, exist_ok=True)
            r = tool("get", uuid + "/", dest + "/", ok=False)
        finally:
            stub_sign(cfg["api"], "valid")
        expect(r.returncode != 0, "arv-get succeeded with unsigned locators")
        return f"exit {r.returncode}"

    check(part, "real arv-get refused when the API server hands out unsigned locators", get_refused)

    def replication2():
        r = tool("put", "--no-progress", "--no-resume", "--replication", "2", fx["small"], ok=False)
        return f"exit {r.returncode}: {r.stderr.decode().strip()[-200:]}"

    check(part, "real arv-put --replication 2 (reported, not judged)", replication2)


def main():
    t0 = time.time()
    parts = sys.argv[2:] or list(BACKENDS)
    fx = make_fixtures()
    print(
        f"fixtures made in {time.time() - t0:.1f}s; SDK tools present: {HAVE_TOOLS}; googleapiclient "
        f"{googleapiclient_compat._discovery.__name__} build(num_retries=) bridged: {googleapiclient_compat.ADAPTED}",
        flush=True,
    )
    for part in parts:
        if part == "two":
            run_two(part, BACKENDS[part], fx)
        else:
            run_backend(part, BACKENDS[part], fx)
    print(f"({time.time() - t0:.1f}s)")
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
