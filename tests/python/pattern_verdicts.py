"""Reads STIX patterns, one JSON string per line on stdin, and prints for each the
verdict of the OASIS stix2-validator (strict, STIX 2.1) on an indicator carrying it:
"valid", or "invalid" and the validator's first message. Used to check the node's own
pattern checker against the reference one.
"""

import json
import sys

from stix2validator import ValidationOptions
from stix2validator.v21.musts import patterns


def verdict(pattern, options):
    indicator = {
        "type": "indicator",
        "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
        "spec_version": "2.1",
        "pattern_type": "stix",
        "pattern": pattern,
    }
    try:
        errors = list(patterns(indicator, options))
    except Exception as e:  # the reference parser failing is a refusal too
        return f"invalid {type(e).__name__}: {e}"
    if errors:
        return "invalid " + str(errors[0]).replace("\n", " ")
    return "valid"


def main():
    options = ValidationOptions(version="2.1", strict=True)
    for line in sys.stdin:
        line = line.strip()
        if line:
            print(verdict(json.loads(line), options), flush=False)


if __name__ == "__main__":
    main()
