"""``OtelExporter``: one OpenTelemetry span per operation, built from operation events.

Needs the ``otel`` extra (``pip install 'firetitan_async[otel]'``, i.e. ``opentelemetry-api``;
add ``opentelemetry-sdk`` and an exporter to ship the spans somewhere).

A span ``firetitan_async.<operation>`` starts at ``submitted`` and ends at ``finished`` or
``failed`` (status ERROR with the redacted error text). ``accepted``, ``queued``, ``started``,
``retried`` and ``stalled`` become span events; the end carries ``firetitan.seq_id``,
``firetitan.request_id`` and the seconds per phase (``firetitan.phase.compute_s``, …). The span's
parent is the span current where the operation was called.

Example::

    from opentelemetry.sdk.trace import TracerProvider
    async with ServiceSession(url, on_event=OtelExporter(TracerProvider())) as session:
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import FiretitanError
from ._events import OperationEvent

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["OtelExporter"]


class OtelExporter:
    """An event hook that turns every operation into one OpenTelemetry span.

    ``tracer_provider`` defaults to the global one (``opentelemetry.trace``). Raises
    :class:`FiretitanError` if ``opentelemetry-api`` is not installed.

    Example::

        exporter = OtelExporter()
        session.add_event_hook(exporter)
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:
            raise FiretitanError(
                "OtelExporter needs opentelemetry-api: pip install 'firetitan_async[otel]'"
            ) from exc
        provider = tracer_provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer("firetitan_async", __version__)
        self._status = trace.Status
        self._error = trace.StatusCode.ERROR
        self._spans: dict[int, Span] = {}

    def __call__(self, event: OperationEvent) -> None:
        at = int(event.wall_time * 1e9)
        if event.kind == "submitted":
            self._spans[event.op_id] = self._tracer.start_span(
                f"firetitan_async.{event.operation}",
                start_time=at,
                attributes=_attributes(event),
            )
            return
        span = self._spans.get(event.op_id)
        if span is None:
            return
        if event.kind not in ("finished", "failed"):
            span.add_event(event.kind, attributes=_attributes(event), timestamp=at)
            return
        del self._spans[event.op_id]
        span.set_attributes(_attributes(event))
        for phase, seconds in event.phase_s.items():
            span.set_attribute(f"firetitan.phase.{phase}_s", seconds)
        if event.kind == "failed":
            span.set_status(self._status(self._error, event.detail))
        span.end(end_time=at)


def _attributes(event: OperationEvent) -> dict[str, Any]:
    values = {
        "firetitan.operation": event.operation,
        "firetitan.seq_id": event.seq_id,
        "firetitan.request_id": event.request_id,
        "firetitan.phase": event.phase,
        "firetitan.queue_state": event.queue_state,
        "firetitan.request_type": event.request_type,
        "firetitan.retries": event.retries,
        "firetitan.tokens": event.tokens,
        "firetitan.detail": event.detail,
    }
    return {k: v for k, v in values.items() if v is not None}
