"""Request counts and latency by interaction and status, rendered in the Prometheus text format.

Counters are per process: with several workers, each scrape sees the worker that answered it
(label `pid` tells them apart).
"""
from __future__ import annotations

import os
from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def observe(self, interaction: str, status: int, seconds: float) -> None:
        self.requests[(interaction, str(status))] += 1
        counts = self.buckets[interaction]
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        self.sums[interaction] += seconds
        self.counts[interaction] += 1

    def render(self, gauges: dict[str, dict[str, int]]) -> str:
        pid = os.getpid()
        lines = ["# HELP fhirserver_requests_total FHIR requests by interaction and HTTP status.",
                 "# TYPE fhirserver_requests_total counter"]
        for (interaction, status), value in sorted(self.requests.items()):
            lines.append(f'fhirserver_requests_total{{interaction="{interaction}",status="{status}",pid="{pid}"}}'
                         f" {value}")
        lines += ["# HELP fhirserver_request_seconds FHIR request latency by interaction.",
                  "# TYPE fhirserver_request_seconds histogram"]
        for interaction in sorted(self.counts):
            labels = f'interaction="{interaction}",pid="{pid}"'
            for bound, value in zip(BUCKETS, self.buckets[interaction], strict=True):
                lines.append(f'fhirserver_request_seconds_bucket{{{labels},le="{bound}"}} {value}')
            lines.append(f'fhirserver_request_seconds_bucket{{{labels},le="+Inf"}} {self.counts[interaction]}')
            lines.append(f"fhirserver_request_seconds_sum{{{labels}}} {self.sums[interaction]:.6f}")
            lines.append(f"fhirserver_request_seconds_count{{{labels}}} {self.counts[interaction]}")
        for family, values in gauges.items():
            lines += [f"# TYPE fhirserver_{family} gauge"]
            for key, value in sorted(values.items()):
                lines.append(f'fhirserver_{family}{{name="{key}",pid="{pid}"}} {value}')
        return "\n".join(lines) + "\n"
