"""What ``/metrics`` reports, in the Prometheus text format."""

from __future__ import annotations

import bisect
import collections
import itertools
import time

from gpt2_lightning.generation.engine import BatchEngine

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """What ``/metrics`` reports, in the Prometheus text format."""

    def __init__(self, engine: BatchEngine, window: float = 10.0):
        self.engine = engine
        self.window = window
        self.requests: collections.Counter[str] = collections.Counter()
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def observe(self, status: int, seconds: float) -> None:
        self.requests[str(status)] += 1
        self.latency_sum += seconds
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last ``window`` seconds."""
        now, total = time.monotonic(), self.engine.generated_tokens
        self._samples.append((now, total))
        while self._samples and now - self._samples[0][0] > self.window:
            self._samples.popleft()
        first_time, first_total = self._samples[0]
        return (total - first_total) / (now - first_time) if now > first_time else 0.0

    def render(self) -> str:
        lines = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
            lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

        metric("gpt2_queue_depth", "gauge", "Requests waiting for a row in the batch.",
               [("", self.engine.queue_depth)])
        metric("gpt2_batch_size", "gauge", "Sequences decoding in the running batch.", [("", self.engine.batch_size)])
        metric("gpt2_generated_tokens_total", "counter", "Tokens generated since the start.",
               [("", self.engine.generated_tokens)])
        metric("gpt2_generated_tokens_per_second", "gauge", f"Tokens generated per second over the last "
               f"{self.window:g} s.", [("", self.tokens_per_second())])
        metric("gpt2_prompt_tokens_computed_total", "counter", "Prompt positions prefilled (a kept prefix's are not).",
               [("", self.engine.prefilled_tokens)])
        prefixes = self.engine.prefixes
        metric("gpt2_prefix_cache_reused_tokens_total", "counter", "Prompt positions taken from the prefix cache.",
               [("", prefixes.reused_positions if prefixes else 0)])
        metric("gpt2_requests_total", "counter", "Completion requests answered, by HTTP status.",
               [(f'{{status="{status}"}}', count) for status, count in sorted(self.requests.items())])
        cumulative = list(itertools.accumulate(self.latency_counts))
        metric("gpt2_request_duration_seconds", "histogram", "Time from a completion request to its last byte.",
               [*((f'_bucket{{le="{bound:g}"}}', n) for bound, n in zip(LATENCY_BUCKETS, cumulative)),
                ('_bucket{le="+Inf"}', cumulative[-1]), ("_sum", self.latency_sum), ("_count", cumulative[-1])])
        return "\n".join(lines) + "\n"
