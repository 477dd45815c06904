"""Writes one STIX 2.1 bundle made of the OASIS example bundles in tests/fixtures/stix,
repeated COPIES times, each copy with fresh ids (references inside a copy follow their
objects; TLP marking definitions keep their well-known ids).

Usage: make_bundle.py COPIES OUTPUT
"""

import glob
import json
import os
import re
import sys
import uuid

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "stix")
ID = re.compile(
    r"([a-z][a-z0-9-]*)--([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)


def main(copies, output):
    bundles = [json.load(open(path)) for path in sorted(glob.glob(os.path.join(FIXTURES, "*.json")))]
    objects = []
    for copy in range(copies):
        fresh = {}

        def rename(match):
            old = match.group(0)
            if old.startswith("marking-definition--"):
                return old
            if old not in fresh:
                fresh[old] = f"{match.group(1)}--{uuid.uuid4()}"
            return fresh[old]

        for bundle in bundles:
            for obj in bundle["objects"]:
                if obj["type"] == "marking-definition" and copy > 0:
                    continue
                objects.append(json.loads(ID.sub(rename, json.dumps(obj))))
    with open(output, "w") as out:
        json.dump({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}, out)
    print(f"{len(objects)} objects written to {output}")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
