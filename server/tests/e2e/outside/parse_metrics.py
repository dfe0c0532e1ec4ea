"""prometheus_client's own exposition parser, as a Prometheus-compatible
scraper reads /metrics. Prints every sample as a JSON line
{"name", "labels", "value"}, or exits non-zero if the text does not parse.

usage: parse_metrics.py URL
"""

import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

with urllib.request.urlopen(sys.argv[1]) as answer:
    text = answer.read().decode()
for family in text_string_to_metric_families(text):
    for sample in family.samples:
        print(json.dumps({
            "family": family.name,
            "type": family.type,
            "name": sample.name,
            "labels": sample.labels,
            "value": sample.value,
        }))
