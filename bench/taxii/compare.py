#!/usr/bin/env python3
"""Entente against OpenTAXII and medallion, side by side, through TAXII 2.1 only.

Usage (from the repository root):

  python3 bench/taxii/compare.py [--quick] [--entente N] [--opentaxii N] [--medallion N]
                                 [--skip NAME]... [--lookups N] [--envelope N] [--page N]
                                 [--entente-bin PATH] [--venv DIR] [--seed N]

Creates (once) a virtual environment with the pinned peers of requirements.txt, then
re-runs itself inside it. Generates N STIX 2.1 indicators deterministically, and for
each server in turn: sets it up in a temporary directory, starts it on loopback, adds
the indicators through `POST .../objects/` in envelopes, reads them all back through
`GET .../objects/` following `next`, looks up random ids through
`GET .../objects/{id}/`, reads the server process's peak RSS, and stops it. Prints one
table with every figure and Entente's ratio to each peer.

Defaults: 100,000 indicators for Entente and OpenTAXII, 10,000 for medallion (its memory
backend does work proportional to the objects it holds for every object added and
read, so its cost grows with the square of the collection). `--quick` runs
1,000 / 1,000 / 300 for a smoke run.
"""

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REQUIREMENTS = os.path.join(HERE, "requirements.txt")
TAXII = "application/taxii+json;version=2.1"
# TLP 2.0 marking definitions (OASIS ids).
TLP = {
    "CLEAR": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "GREEN": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "AMBER": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
}
NAMES = ("entente", "opentaxii", "medallion")
LABELS = {"entente": "Entente", "opentaxii": "OpenTAXII", "medallion": "medallion"}


def parse_args():
    p = argparse.ArgumentParser(
        description="Entente, OpenTAXII 0.9.3 and medallion 3.0.0 through TAXII 2.1 "
        "on this machine")
    p.add_argument("--entente", type=int, help="indicators for Entente (default 100000)")
    p.add_argument("--opentaxii", type=int, help="indicators for OpenTAXII (default 100000)")
    p.add_argument("--medallion", type=int, help="indicators for medallion (default 10000)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1000 for Entente and OpenTAXII, 300 for medallion, 20 lookups")
    p.add_argument("--skip", action="append", default=[], choices=NAMES,
                   help="leave a server out (repeatable)")
    p.add_argument("--lookups", type=int, help="ids looked up one by one (default 100)")
    p.add_argument("--envelope", type=int, default=1000,
                   help="objects per POST (default 1000; Entente takes at most 10000)")
    p.add_argument("--page", type=int, default=1000,
                   help="`limit` per GET page (default 1000, Entente's largest)")
    p.add_argument("--entente-bin", help="the entente binary (default: target/release/entente "
                   "under CARGO_TARGET_DIR or the repository, built if missing)")
    p.add_argument("--venv", default=os.environ.get("TAXII_BENCH_VENV",
                                                    os.path.join(ROOT, "target", "taxii-bench-venv")),
                   help="virtual environment for the peers (default target/taxii-bench-venv)")
    p.add_argument("--seed", type=int, default=2026, help="seed of the generated indicators")
    p.add_argument("--timeout", type=float, default=3600,
                   help="seconds one request may take before the server is given up (default 3600)")
    p.add_argument("--no-venv", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    quick = args.quick
    for name, full, small in (("entente", 100_000, 1_000), ("opentaxii", 100_000, 1_000),
                              ("medallion", 10_000, 300)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.lookups is None:
        args.lookups = 20 if quick else 100
    if not 1 <= args.envelope <= 10_000:
        p.error("--envelope must be 1 to 10000")
    if not 1 <= args.page <= 1000:
        p.error("--page must be 1 to 1000")
    return args


# ---------------------------------------------------------------------------------------
# The virtual environment


def ensure_venv(args):
    """Creates the virtual environment with the pinned packages if it is missing or out
    of date, then re-runs this script with its interpreter."""
    python = os.path.join(args.venv, "bin", "python")
    stamp = os.path.join(args.venv, ".requirements")
    with open(REQUIREMENTS) as f:
        wanted = f.read()
    current = None
    if os.path.exists(stamp):
        with open(stamp) as f:
            current = f.read()
    if current != wanted:
        print(f"installing the peers into {args.venv} (pinned in {REQUIREMENTS})", flush=True)
        if not os.path.exists(python):
            subprocess.run([sys.executable, "-m", "venv", args.venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "-r", REQUIREMENTS], check=True)
        with open(stamp, "w") as f:
            f.write(wanted)
    os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:], "--no-venv"])


# ---------------------------------------------------------------------------------------
# The indicators


def stix_time(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".000Z"


def generate(count, seed):
    """`count` valid STIX 2.1 indicators, the same for the same seed: version-4 UUID ids,
    a name and a description, a TLP 2.0 marking, and patterns on IPv4 addresses, domain
    names, URLs and SHA-256 file hashes in turn."""
    rng = random.Random(seed)
    base = 1_767_225_600  # 2026-01-01T00:00:00Z
    markings = (TLP["GREEN"], TLP["GREEN"], TLP["CLEAR"], TLP["AMBER"])
    objects = []
    for n in range(count):
        ident = uuid.UUID(int=rng.getrandbits(128), version=4)
        kind = n % 4
        if kind == 0:
            value = "10.%d.%d.%d" % (n >> 16 & 255, n >> 8 & 255, n & 255)
            pattern, what = f"[ipv4-addr:value = '{value}']", "scanning host"
        elif kind == 1:
            value = f"c2-{n:07d}.{rng.choice(('bench', 'sample', 'test'))}.example.com"
            pattern, what = f"[domain-name:value = '{value}']", "command-and-control domain"
        elif kind == 2:
            value = f"https://dl-{n:07d}.example.net/{rng.getrandbits(32):08x}/payload.bin"
            pattern, what = f"[url:value = '{value}']", "malware download URL"
        else:
            value = "%064x" % rng.getrandbits(256)
            pattern, what = f"[file:hashes.'SHA-256' = '{value}']", "dropper sample"
        created = stix_time(base + n)
        objects.append({
            "type": "indicator",
            "spec_version": "2.1",
            "id": f"indicator--{ident}",
            "created": created,
            "modified": created,
            "name": f"{what} {n}",
            "description": f"Synthetic {what} number {n}, generated for the TAXII benchmark.",
            "indicator_types": ["malicious-activity"],
            "pattern": pattern,
            "pattern_type": "stix",
            "valid_from": created,
            "object_marking_refs": [markings[n % len(markings)]],
        })
    return objects


# ---------------------------------------------------------------------------------------
# Processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid, field):
    """A field of /proc/PID/status in KiB (VmHWM, VmRSS), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def decode(resp):
    """The JSON body of an answer, decoded with orjson: the client is the same for every
    server, and its own decoding should weigh as little as it can in the figures of the
    fastest one (`requests`' `json()` takes about twice as long per page)."""
    import orjson
    return orjson.loads(resp.content)


def brief(resp):
    """Status and at most 200 characters of an answer, for error messages."""
    text = resp.text[:200].replace("\n", " ")
    return f"{resp.status_code} {text!r}"


def client_session():
    """The benchmark's HTTP client for every server: a `requests` session that does not
    read proxy settings, `.netrc` or CA bundles from the environment on each request
    (which costs about 0.2 ms per request, a tenth of a lookup on the fastest server,
    and says nothing about the server). Each server's session sets what it needs."""
    import requests
    s = requests.Session()
    s.trust_env = False
    return s


def get(session, url, result, **kwargs):
    """A GET; an answer of 500 or more is retried once after a second (and counted in
    `result["retries"]`), as a polling client would."""
    r = session.get(url, **kwargs)
    if r.status_code >= 500:
        result["retries"] = result.get("retries", 0) + 1
        print(f"  retrying after {brief(r)}", flush=True)
        time.sleep(1)
        r = session.get(url, **kwargs)
    return r


def wait_until(check, what, timeout=60, proc=None):
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the server exited with {proc.returncode}")
        try:
            result = check()
            if result:
                return result
        except Exception:  # noqa: BLE001 -- not up yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout} s")
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------
# The servers


class Server:
    """A TAXII 2.1 server under test: `start` leaves `session`, `collection_url` and
    `proc` set."""

    name = ""

    def __init__(self, work):
        self.work = work
        self.proc = None
        self.session = None
        self.collection_url = None

    def discover(self, discovery_url):
        """Follows discovery, the API root and its collections as a TAXII client does;
        returns the URL of the one collection."""
        import urllib.parse
        s = self.session
        r = s.get(discovery_url)
        if r.status_code != 200:
            raise RuntimeError(f"{self.name} discovery: {brief(r)}")
        root = urllib.parse.urljoin(discovery_url, r.json()["api_roots"][0])
        r = s.get(root)
        if r.status_code != 200:
            raise RuntimeError(f"{self.name} API root: {brief(r)}")
        r = s.get(root + "collections/")
        if r.status_code != 200:
            raise RuntimeError(f"{self.name} collections: {brief(r)}")
        collections = r.json().get("collections", [])
        if len(collections) != 1:
            raise RuntimeError(f"{self.name}: expected one collection, got {len(collections)}")
        c = collections[0]
        if not (c.get("can_read") and c.get("can_write")):
            raise RuntimeError(f"{self.name}: the collection is not readable and "
                               f"writable: {str(c)[:200]}")
        return f"{root}collections/{c['id']}/"

    def version(self):
        from importlib.metadata import version
        return version(self.name)


class Entente(Server):
    name = "entente"
    NODE = "bench.hq"
    ANALYST = "analyst.bench"

    def __init__(self, work, binary, built_here):
        super().__init__(work)
        self.binary = binary
        self.built_here = built_here

    def version(self):
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
        version = out.stdout.strip().split()[-1] if out.returncode == 0 else "?"
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True)
        if self.built_here and commit.returncode == 0:
            version += f" ({commit.stdout.strip()})"
        return version

    def run(self, *args):
        out = subprocess.run([self.binary, *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"entente {args[0]} failed: {out.stderr[:200]}")
        return out.stdout

    def start(self):
        import requests
        from requests.adapters import HTTPAdapter

        node = os.path.join(self.work, "hq")
        certs = os.path.join(node, "certs")
        self.run("init", "--dir", node, "--id", self.NODE, "--listen", "127.0.0.1:0",
                 "--with-certs")
        with open(os.path.join(node, "entente.toml"), "a") as f:
            f.write(f'\n[[client]]\nid = "{self.ANALYST}"\nrole = "analyst"\n'
                    '\n[taxii]\nlisten = "127.0.0.1:0"\n')
        self.run("certs", "client", "--dir", certs, "--id", self.ANALYST)
        self.log = open(os.path.join(self.work, "serve.log"), "w")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--config", os.path.join(node, "entente.toml")],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, text=True)
        taxii = None
        deadline = time.monotonic() + 60
        for line in self.proc.stdout:
            if " TAXII 2.1 on https://" in line:
                taxii = line.split(" TAXII 2.1 on ", 1)[1].strip()
                break
            if time.monotonic() > deadline:
                break
        if taxii is None:
            self.log.flush()
            with open(os.path.join(self.work, "serve.log")) as f:
                tail = f.read()[-200:]
            raise RuntimeError(f"entente serve did not report its TAXII listener: {tail!r}")
        # Drain stdout so the node never blocks on it.
        import threading
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

        node_id = self.NODE

        class NodeName(HTTPAdapter):
            """Checks the node's certificate against its id (its DNS name) while
            connecting to a loopback address."""

            def init_poolmanager(self, *a, **kw):
                kw["assert_hostname"] = node_id
                kw["server_hostname"] = node_id
                super().init_poolmanager(*a, **kw)

        s = client_session()
        s.mount("https://", NodeName())
        s.verify = os.path.join(certs, "ca.crt")
        s.cert = (os.path.join(certs, f"{self.ANALYST}.crt"),
                  os.path.join(certs, f"{self.ANALYST}.key"))
        s.headers["Accept"] = TAXII
        self.session = s
        self.collection_url = self.discover(taxii)
        self.auth = "client certificate (mutual TLS)"


class OpenTaxii(Server):
    name = "opentaxii"

    def start(self):
        import requests

        port = free_port()
        config = os.path.join(self.work, "opentaxii.yml")
        with open(config, "w") as f:
            f.write(f"""\
domain: "127.0.0.1:{port}"
support_basic_auth: yes
return_server_error_details: no
auth_api:
  class: opentaxii.auth.sqldb.SQLDatabaseAPI
  parameters:
    db_connection: sqlite:///{self.work}/auth.db
    create_tables: yes
    secret: {uuid.uuid4().hex}{uuid.uuid4().hex}
    token_ttl_secs: 86400
taxii1:
taxii2:
  title: "OpenTAXII under benchmark"
  public_discovery: true
  allow_custom_properties: true
  max_content_length: 67108864
  persistence_api:
    class: opentaxii.persistence.sqldb.Taxii2SQLDatabaseAPI
    parameters:
      db_connection: sqlite:///{self.work}/data.db
      create_tables: yes
logging:
  opentaxii: warning
  root: warning
""")
        env = dict(os.environ, OPENTAXII_CONFIG=config)
        bindir = os.path.dirname(sys.executable)

        def cli(*args):
            out = subprocess.run([os.path.join(bindir, args[0]), *args[1:]], env=env,
                                 capture_output=True, text=True, cwd=self.work)
            if out.returncode != 0:
                raise RuntimeError(f"{args[0]} failed: {out.stderr[-200:]}")
            return out.stdout

        cli("opentaxii-add-api-root", "-t", "bench", "-d", "benchmark API root", "--default")
        import sqlite3
        with sqlite3.connect(os.path.join(self.work, "data.db")) as db:
            (root_id,) = db.execute("select id from opentaxii_api_root").fetchone()
        root_id = str(uuid.UUID(root_id))
        cli("opentaxii-add-collection", "-r", root_id, "-t", "indicators",
            "-d", "benchmark collection", "--public", "--public-write")
        password = uuid.uuid4().hex
        cli("opentaxii-create-account", "-u", "bench", "-p", password, "-a")

        self.log = open(os.path.join(self.work, "server.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "peer_server.py"), "opentaxii", str(port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.work)
        base = f"http://127.0.0.1:{port}"
        s = client_session()
        # A JWT from the auth endpoint: Basic would hash the password on every request.
        token = wait_until(
            lambda: s.post(f"{base}/management/auth",
                           json={"username": "bench", "password": password}).json()["token"],
            "OpenTAXII", proc=self.proc)
        s.headers["Authorization"] = f"Bearer {token}"
        s.headers["Accept"] = TAXII
        self.session = s
        self.collection_url = self.discover(f"{base}/taxii2/")
        self.auth = "JWT bearer token"


class Medallion(Server):
    name = "medallion"

    def start(self):
        import requests

        port = free_port()
        password = uuid.uuid4().hex
        config = os.path.join(self.work, "medallion.json")
        collection = str(uuid.uuid4())
        with open(config, "w") as f:
            json.dump({
                "backend": {
                    "module": "medallion.backends.memory_backend",
                    "module_class": "MemoryBackend",
                    "filename": os.path.join(self.work, "data.json"),
                    # `next` tokens must outlive the slowest page.
                    "session_timeout": 86400,
                },
                "users": {"bench": password},
                "taxii": {"max_page_size": 1000},
            }, f)
        with open(os.path.join(self.work, "data.json"), "w") as f:
            json.dump({
                "/discovery": {
                    "title": "medallion under benchmark",
                    "default": f"http://127.0.0.1:{port}/bench/",
                    "api_roots": [f"http://127.0.0.1:{port}/bench/"],
                },
                "bench": {
                    "information": {
                        "title": "benchmark API root",
                        "versions": [TAXII],
                        "max_content_length": 67108864,
                    },
                    "status": [],
                    "collections": [{
                        "id": collection,
                        "title": "indicators",
                        "can_read": True,
                        "can_write": True,
                        "media_types": ["application/stix+json;version=2.1"],
                        "objects": [],
                        "manifest": [],
                    }],
                },
            }, f)
        self.log = open(os.path.join(self.work, "server.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "peer_server.py"), "medallion", str(port),
             config],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.work)
        s = client_session()
        s.auth = ("bench", password)  # medallion keeps plain passwords: no hashing cost
        s.headers["Accept"] = TAXII
        self.session = s
        discovery = f"http://127.0.0.1:{port}/taxii2/"
        wait_until(lambda: s.get(discovery).status_code == 200, "medallion", proc=self.proc)
        self.collection_url = self.discover(discovery)
        self.auth = "HTTP Basic (plain password in its configuration)"


# ---------------------------------------------------------------------------------------
# The measurement


def percentile(values, p):
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def measure(server, objects, args, result):
    """Fills `result` phase by phase, so that what was measured before a failure stays."""
    s = server.session
    url = server.collection_url
    pid = server.proc.pid
    ids = [o["id"] for o in objects]

    # Ingest: the envelopes are encoded before the clock starts.
    bodies = [json.dumps({"objects": objects[i:i + args.envelope]}).encode()
              for i in range(0, len(objects), args.envelope)]
    headers = {"Content-Type": TAXII}
    stored = 0
    cpu0, client0, t0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
    for n, body in enumerate(bodies):
        r = s.post(url + "objects/", data=body, headers=headers, timeout=args.timeout)
        if r.status_code not in (200, 202):
            raise RuntimeError(f"{server.name} POST envelope {n}: {brief(r)}")
        status = decode(r)
        if status.get("status") != "complete" or status.get("failure_count", 0):
            raise RuntimeError(f"{server.name} POST envelope {n}: status {status.get('status')}, "
                               f"{status.get('failure_count')} failures: "
                               f"{json.dumps(status.get('failures', [])[:2])[:200]}")
        stored += status.get("success_count", 0)
    elapsed = time.perf_counter() - t0
    result["ingest_s"] = elapsed
    result["ingest_rate"] = len(objects) / elapsed
    result["ingest_cpu"] = cpu_seconds(pid) - cpu0
    result["ingest_client_cpu"] = time.process_time() - client0
    result["envelopes"] = len(bodies)
    if stored != len(objects):
        raise RuntimeError(f"{server.name}: {stored} of {len(objects)} objects stored")
    print(f"  ingest: {len(objects):,} objects in {elapsed:.1f} s", flush=True)

    # Read-back: every page, following `next`.
    seen = set()
    pages = 0
    cpu0, client0, t0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
    params = {"limit": args.page}
    while True:
        r = get(s, url + "objects/", result, params=params, timeout=args.timeout)
        if r.status_code != 200:
            raise RuntimeError(f"{server.name} GET objects page {pages}: {brief(r)}")
        page = decode(r)
        pages += 1
        for o in page.get("objects", []):
            # A listing may also carry the definitions its objects refer to (marking
            # definitions, the origin's identity): they are not objects that were added.
            if o.get("type") == "indicator":
                seen.add(o["id"])
        if not page.get("more") or not page.get("next"):
            break
        params = {"limit": args.page, "next": page["next"]}
    elapsed = time.perf_counter() - t0
    result["read_s"] = elapsed
    result["read_rate"] = len(seen) / elapsed
    result["read_cpu"] = cpu_seconds(pid) - cpu0
    result["read_client_cpu"] = time.process_time() - client0
    result["pages"] = pages
    missing = len(set(ids) - seen)
    if missing or len(seen) != len(objects):
        raise RuntimeError(f"{server.name} read-back: {len(seen)} distinct objects, "
                           f"{missing} of the {len(objects)} added missing")
    print(f"  read-back: {len(seen):,} objects in {elapsed:.1f} s ({pages} pages)", flush=True)

    # Lookups by id, one at a time.
    rng = random.Random(args.seed + 1)
    times = []
    for ident in rng.sample(ids, min(args.lookups, len(ids))):
        t = time.perf_counter()
        r = get(s, f"{url}objects/{ident}/", result, timeout=args.timeout)
        times.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"{server.name} GET object {ident}: {brief(r)}")
        got = [o["id"] for o in decode(r).get("objects", [])]
        if got != [ident]:
            raise RuntimeError(f"{server.name} GET object {ident}: answered {got[:3]}")
    result["lookup_p50"] = percentile(times, 50)
    result["lookup_p95"] = percentile(times, 95)
    result["lookups"] = len(times)
    result["peak_rss_mib"] = (proc_status(pid, "VmHWM") or 0) / 1024
    print(f"  lookups: p50 {result['lookup_p50']:.2f} ms, p95 {result['lookup_p95']:.2f} ms; "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)


# ---------------------------------------------------------------------------------------
# The report


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 1024 / 1024
    except OSError:
        pass
    load = os.getloadavg()[0]
    return (f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB, {platform.system()} "
            f"{platform.release()} {platform.machine()}, Python {platform.python_version()}, "
            f"load average {load:.1f} at the start")


def table(results, versions, auths):
    names = [n for n in NAMES if n in results]
    peers = [n for n in names if n != "entente" and "entente" in results]
    header = ["figure"] + [f"{LABELS[n]} {versions[n]}" for n in names] + \
        [f"Entente / {LABELS[p]}" for p in peers]
    rows = []

    def row(label, key, fmt, better="higher"):
        cells = [label]
        for n in names:
            cells.append(fmt(results[n][key]) if key in results[n] else "not measured")
        for p in peers:
            e, o = results["entente"].get(key), results[p].get(key)
            if e is None or o is None or not e or not o:
                cells.append("")
                continue
            ratio = e / o if better == "higher" else o / e
            cells.append(f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:,.1f}x")
        rows.append(cells)

    rows.append(["indicators"] + [f"{results[n]['count']:,}" for n in names] + [""] * len(peers))
    row("ingest (objects/s)", "ingest_rate", lambda v: f"{v:,.0f}")
    row("read-back (objects/s)", "read_rate", lambda v: f"{v:,.0f}")
    row("lookup by id p50 (ms)", "lookup_p50", lambda v: f"{v:,.2f}", better="lower")
    row("lookup by id p95 (ms)", "lookup_p95", lambda v: f"{v:,.2f}", better="lower")
    row("server CPU, ingest (s)", "ingest_cpu", lambda v: f"{v:,.2f}", better="lower")
    row("server CPU, read-back (s)", "read_cpu", lambda v: f"{v:,.2f}", better="lower")
    row("client CPU, ingest (s)", "ingest_client_cpu", lambda v: f"{v:,.2f}", better="lower")
    row("client CPU, read-back (s)", "read_client_cpu", lambda v: f"{v:,.2f}", better="lower")
    row("server peak RSS (MiB)", "peak_rss_mib", lambda v: f"{v:,.0f}", better="lower")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print("Ratios: how many times Entente's figure is better (rates: Entente / peer; "
          "times and memory: peer / Entente).")
    print("Authentication: " + "; ".join(f"{LABELS[n]} {auths[n]}" for n in names if n in auths))
    for n in names:
        if results[n].get("retries"):
            print(f"{LABELS[n]}: {results[n]['retries']} GET(s) answered 500 or more and were retried once")
        if "error" in results[n]:
            print(f"{LABELS[n]} stopped early: {results[n]['error']}")


def entente_binary(args):
    if args.entente_bin:
        return args.entente_bin
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.path.join(target, "release", "entente")
    if not os.path.exists(binary):
        print("building entente (release)", flush=True)
        subprocess.run(["cargo", "build", "--release", "--bin", "entente"], cwd=ROOT, check=True)
    return binary


def interrupted(signum, frame):
    raise KeyboardInterrupt


def main():
    # Stopped from outside: unwind, so that the server under test is stopped too.
    signal.signal(signal.SIGTERM, interrupted)
    args = parse_args()
    if not args.no_venv:
        ensure_venv(args)
    # A private CA is passed explicitly; the machine's bundle variables must not override it.
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        os.environ.pop(var, None)
    print("machine:", machine())
    counts = {n: getattr(args, n) for n in NAMES if n not in args.skip}
    print("indicators:", ", ".join(f"{LABELS[n]} {c:,}" for n, c in counts.items()),
          f"(seed {args.seed}); envelopes of {args.envelope:,}, pages of {args.page:,}, "
          f"{args.lookups} lookups", flush=True)
    objects = generate(max(counts.values()), args.seed)
    results, versions, auths = {}, {}, {}
    for name, count in counts.items():
        work = tempfile.mkdtemp(prefix=f"taxii-bench-{name}-")
        server = {"entente": lambda: Entente(work, entente_binary(args), not args.entente_bin),
                  "opentaxii": lambda: OpenTaxii(work),
                  "medallion": lambda: Medallion(work)}[name]()
        print(f"{LABELS[name]}: {count:,} indicators", flush=True)
        failed = False
        result = {"count": count}
        try:
            server.start()
            versions[name] = server.version()
            auths[name] = server.auth
            results[name] = result
            measure(server, objects[:count], args, result)
        except Exception as e:  # noqa: BLE001 -- report and go on with the next server
            failed = True
            message = str(e)[:300]
            if "timed out" in message.lower():
                message = f"a request took longer than --timeout {args.timeout:.0f} s"
            result["error"] = message
            if server.proc is not None and server.proc.poll() is None:
                result["peak_rss_mib"] = (proc_status(server.proc.pid, "VmHWM") or 0) / 1024
            print(f"  {LABELS[name]} failed: {message}", flush=True)
        finally:
            if server.proc is not None:
                stop(server.proc)
        if failed:
            print(f"  its files and log are kept in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    if results:
        table(results, versions, auths)
    ok = all(n in results and "error" not in results[n] for n in counts)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
