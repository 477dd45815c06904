"""Reads and writes a node's TAXII 2.1 collection with the real `taxii2-client` and
`stix2.TAXIICollectionSource`, as a GREEN-only researcher and as an analyst.

Usage: taxii_views.py DISCOVERY_URL CA RESEARCHER_CERT RESEARCHER_KEY ANALYST_CERT ANALYST_KEY

Checks, failing with an assertion:
  - the analyst adds indicators of every TLP through `Collection.add_objects`;
  - the researcher's collection says it may read and not write; `taxii2-client` itself
    refuses to write, and a POST made anyway is answered 403;
  - paging with `as_pages` while the analyst publishes between pages returns the
    researcher's view exactly once each: every GREEN and CLEAR indicator, nothing else,
    no duplicates;
  - each page holds at most `limit` items, and besides them the marking definitions
    and identities its items are the first of the listing to refer to, each once;
  - everything the researcher reads is one valid STIX 2.1 bundle under
    `stix2-validator` in strict mode, every marking and creator it refers to included;
  - `stix2.TAXIICollectionSource` sees the same view, and `get` of an AMBER id is None
    like an id the node does not hold; it finds the GREEN marking definition and the
    node's identity, and not the AMBER marking definition.
Prints `ok N` with the number of objects the researcher saw.
"""

import json
import sys
import uuid

import requests
import stix2
from stix2validator import ValidationOptions, validate_instance
from taxii2client.exceptions import AccessError
from taxii2client.v21 import Server, as_pages

MARKINGS = {
    "CLEAR": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "GREEN": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "AMBER": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "RED": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
TAXII = "application/taxii+json;version=2.1"
SUPPORTING = {"marking-definition", "identity", "extension-definition"}

counter = [0]


def indicator(tlp):
    counter[0] += 1
    n = counter[0]
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": "indicator--" + str(uuid.uuid4()),
        "created": "2025-01-01T00:00:00.000Z",
        "modified": "2025-01-02T00:00:00.000Z",
        "pattern": "[domain-name:value = 'host-%d.example.org']" % n,
        "pattern_type": "stix",
        "valid_from": "2025-01-01T00:00:00Z",
        "object_marking_refs": [MARKINGS[tlp]],
    }


def collection(url, ca, cert, key):
    server = Server(url, verify=ca, cert=(cert, key))
    roots = server.api_roots
    assert len(roots) == 1, roots
    collections = roots[0].collections
    assert len(collections) == 1, collections
    return collections[0]


def add(coll, objects):
    status = coll.add_objects({"objects": objects})
    assert status.status == "complete", status.status
    assert status.success_count == len(objects), (status.success_count, status.failures)


def main():
    url, ca, r_cert, r_key, a_cert, a_key = sys.argv[1:7]
    analyst = collection(url, ca, a_cert, a_key)
    researcher = collection(url, ca, r_cert, r_key)
    assert analyst.can_write and analyst.can_read
    assert researcher.can_read and not researcher.can_write

    by_tlp = {tlp: [indicator(tlp) for _ in range(count)]
              for tlp, count in [("GREEN", 7), ("CLEAR", 3), ("AMBER", 3), ("RED", 2)]}
    add(analyst, [o for objs in by_tlp.values() for o in objs])
    visible = {o["id"] for o in by_tlp["GREEN"] + by_tlp["CLEAR"]}
    hidden = {o["id"] for o in by_tlp["AMBER"] + by_tlp["RED"]}

    # A write without the role: the client refuses, and so does the node.
    try:
        researcher.add_objects({"objects": [indicator("GREEN")]})
        raise AssertionError("taxii2-client wrote to a collection with can_write false")
    except AccessError:
        pass
    refused = requests.post(
        researcher.objects_url,
        cert=(r_cert, r_key),
        verify=ca,
        headers={"Accept": TAXII, "Content-Type": TAXII},
        data=json.dumps({"objects": [indicator("GREEN")]}),
    )
    assert refused.status_code == 403, (refused.status_code, refused.text)
    assert refused.headers["Content-Type"] == TAXII
    assert refused.json()["http_status"] == "403"

    def get_objects(**kwargs):
        envelope = researcher.get_objects(**kwargs)
        items = [o for o in envelope.get("objects", []) if o["type"] not in SUPPORTING]
        assert len(items) <= kwargs["limit"], (len(items), kwargs["limit"])
        return envelope

    # Paging while the analyst publishes between the pages.
    seen = []
    supporting = []
    published = set()
    pages = 0
    for envelope in as_pages(get_objects, per_request=3):
        pages += 1
        objects = envelope.get("objects", [])
        seen.extend(o["id"] for o in objects if o["type"] not in SUPPORTING)
        supporting.extend(o["id"] for o in objects if o["type"] in SUPPORTING)
        more = [indicator("GREEN"), indicator("AMBER")]
        add(analyst, more)
        published.add(more[0]["id"])
        hidden.add(more[1]["id"])
    assert pages >= 4, pages
    assert len(seen) == len(set(seen)), "an object came twice: %r" % seen
    assert visible <= set(seen), "missing: %r" % (visible - set(seen))
    assert not (set(seen) & hidden), "withheld objects were served"
    assert set(seen) <= visible | published, set(seen) - visible - published
    visible |= published
    assert len(supporting) == len(set(supporting)), supporting
    assert MARKINGS["GREEN"] in supporting and MARKINGS["CLEAR"] in supporting, supporting
    assert MARKINGS["AMBER"] not in supporting and MARKINGS["RED"] not in supporting

    # Everything the researcher reads, as one bundle, is valid STIX 2.1 in strict mode,
    # and every marking and creator it names is in it.
    everything = []
    for envelope in as_pages(get_objects, per_request=50):
        everything.extend(envelope.get("objects", []))
    ids = {o["id"] for o in everything}
    for o in everything:
        for ref in o.get("object_marking_refs", []) + [o.get("created_by_ref")]:
            assert ref is None or ref in ids, (o["id"], ref)
    bundle = {"type": "bundle", "id": "bundle--" + str(uuid.uuid4()), "objects": everything}
    result = validate_instance(bundle, ValidationOptions(version="2.1", strict=True))
    assert result.is_valid, [str(e) for e in result.errors]

    # stix2's data source over the same collection.
    source = stix2.TAXIICollectionSource(researcher, allow_custom=True)
    found = source.query([stix2.Filter("type", "=", "indicator")])
    ids = [o.id for o in found]
    assert set(ids) == visible, (set(ids) ^ visible)
    assert len(ids) == len(set(ids))
    assert source.get(by_tlp["AMBER"][0]["id"]) is None
    assert source.get("indicator--" + str(uuid.uuid4())) is None
    assert source.get(MARKINGS["GREEN"]) is not None
    assert source.get(MARKINGS["AMBER"]) is None
    creator = source.get(by_tlp["GREEN"][0]["id"]).created_by_ref
    assert source.get(creator) is not None
    green = source.get(by_tlp["GREEN"][0]["id"])
    assert green is not None and green.pattern == by_tlp["GREEN"][0]["pattern"]
    print("ok %d" % len(ids))


if __name__ == "__main__":
    main()
