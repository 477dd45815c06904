"""Parses a Prometheus text exposition (read from standard input) with the reference
Python client's parsers and prints every sample as JSON, one object per line:
{"family", "type", "name", "labels", "value"}.

The classic text-format parser (prometheus_client.parser) is the one asked for; the
exposition is OpenMetrics, so it is also run through the stricter OpenMetrics parser.
Any parse error exits non-zero."""

import json
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    text = sys.stdin.read()
    # The OpenMetrics parser raises on anything the format does not allow.
    strict = sum(1 for _ in openmetrics_families(text))
    families = list(text_string_to_metric_families(text))
    if strict == 0 or not families:
        print("no metric families", file=sys.stderr)
        return 1
    for family in families:
        for sample in family.samples:
            print(
                json.dumps(
                    {
                        "family": family.name,
                        "type": family.type,
                        "name": sample.name,
                        "labels": sample.labels,
                        "value": sample.value,
                    }
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
