#!/usr/bin/env python3
"""How long a TAXII lookup by id takes for an id the caller may see, one withheld from
it, and one the node does not hold: a withheld id must not be told from an absent one by
the time of its answer.

    python3 bench/taxii/lookup_timing.py [--entente-bin PATH] [--objects N] [--lookups N]

Starts a node (as the side-by-side benchmark does) with an analyst and a read-only
researcher limited to TLP:GREEN, adds N synthetic indicators through TAXII, TLP:GREEN
and TLP:AMBER in turn, then looks ids up as the researcher, one at a time on one connection, the
three kinds drawn at random in turn. Prints, per kind, the 10th, 50th and 90th
percentiles and the mean of the middle 80%, and the difference between withheld and
absent with its standard error. The figures are the whole round trip from a Python
client; they are only comparable within one run.
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402

AMBER = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
RESEARCHER = "researcher.bench"


class WithResearcher(compare.Entente):
    """The benchmark's node, with a read-only client that may see up to TLP:GREEN."""

    def run(self, *args):
        out = super().run(*args)
        if args[0] == "init":
            with open(os.path.join(self.work, "hq", "entente.toml"), "a") as f:
                f.write(f'\n[[client]]\nid = "{RESEARCHER}"\nrole = "read_only"\n'
                        'max_tlp = "GREEN"\nallow_types = ["*"]\n')
        return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entente-bin", default=os.path.join(compare.ROOT, "target", "release",
                                                          "entente"))
    p.add_argument("--objects", type=int, default=20000)
    p.add_argument("--lookups", type=int, default=3000)
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args()
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        os.environ.pop(var, None)

    objects = compare.generate(args.objects, args.seed)
    for i, o in enumerate(objects):
        o["object_marking_refs"] = [AMBER if i % 2 else GREEN]
    work = tempfile.mkdtemp(prefix="entente-timing-")
    node = WithResearcher(work, args.entente_bin, False)
    node.start()
    try:
        import json
        for i in range(0, len(objects), 1000):
            r = node.session.post(node.collection_url + "objects/",
                                  data=json.dumps({"objects": objects[i:i + 1000]}).encode(),
                                  headers={"Content-Type": compare.TAXII})
            if r.status_code != 202:
                raise RuntimeError(f"POST: {compare.brief(r)}")
        certs = os.path.join(work, "hq", "certs")
        node.run("certs", "client", "--dir", certs, "--id", RESEARCHER)
        s = compare.client_session()
        s.mount("https://", node.session.adapters["https://"])
        s.verify = node.session.verify
        s.cert = (os.path.join(certs, f"{RESEARCHER}.crt"),
                  os.path.join(certs, f"{RESEARCHER}.key"))
        s.headers["Accept"] = compare.TAXII

        visible = [o["id"] for i, o in enumerate(objects) if i % 2 == 0]
        withheld = [o["id"] for i, o in enumerate(objects) if i % 2 == 1]
        rng = random.Random(args.seed + 1)
        times = {"visible": [], "withheld": [], "absent": []}
        expected = {"visible": 200, "withheld": 404, "absent": 404}
        for _ in range(args.lookups):
            kind = rng.choice(list(times))
            if kind == "visible":
                ident = rng.choice(visible)
            elif kind == "withheld":
                ident = rng.choice(withheld)
            else:
                ident = f"indicator--{uuid.uuid4()}"
            t = time.perf_counter()
            r = s.get(f"{node.collection_url}objects/{ident}/")
            times[kind].append((time.perf_counter() - t) * 1e6)
            if r.status_code != expected[kind]:
                raise RuntimeError(f"{kind} {ident}: {compare.brief(r)}")
        trimmed = {}
        for kind, values in times.items():
            values.sort()
            cut = len(values) // 10
            trimmed[kind] = values[cut:len(values) - cut]
            print(f"{kind:9} {len(values):5} lookups: p10 {compare.percentile(values, 10):7.0f} us"
                  f"  p50 {compare.percentile(values, 50):7.0f} us"
                  f"  p90 {compare.percentile(values, 90):7.0f} us"
                  f"  trimmed mean {statistics.mean(trimmed[kind]):7.0f} us")
        a, b = trimmed["withheld"], trimmed["absent"]
        diff = statistics.mean(a) - statistics.mean(b)
        err = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
        print(f"withheld - absent: {diff:+.1f} us (standard error {err:.1f} us)")
    finally:
        compare.stop(node.proc)


if __name__ == "__main__":
    main()
