"""OpenTelemetry tracing: one provider per process, exporter chosen by settings, and the
instrumentation of SQLAlchemy and httpx when spans are exported. Kafka spans are made by the
outbox relay and the consumer runner, which carry W3C `traceparent` in message headers.

With no exporter, spans still exist and carry trace ids (for the logs and for propagation to
the next service), but none is recorded and the database and HTTP clients are not wrapped:
a span nobody can read costs the CPU of one that is read (decision 117)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_ON
from sqlalchemy.ext.asyncio import AsyncEngine

_configured = False
_exporting = False


def configure_tracing(service: str, exporter: str, endpoint: str = "") -> None:
    """Install the global tracer provider once per process; later calls are no-ops."""
    global _configured, _exporting
    if _configured:
        return
    _configured = True
    span_exporter: SpanExporter | None = None
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
    _exporting = span_exporter is not None
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        # Unrecorded spans still get ids, so logs and `traceparent` headers keep them.
        sampler=DEFAULT_ON if _exporting else ALWAYS_OFF,
    )
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    if _exporting:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument()


def instrument_engine(engine: AsyncEngine) -> None:
    """Database spans for `engine`, when spans are exported."""
    if not _exporting:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine)


def inject_context() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, `tracestate`)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, str]) -> otel_context.Context:
    return propagate.extract(carrier)


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


@contextlib.contextmanager
def continued(carrier: Mapping[str, str] | None, name: str) -> Iterator[None]:
    """A span for work done later on behalf of a traced request, in that request's trace:
    `carrier` holds the `traceparent` stored with the work when it was asked for."""
    token = otel_context.attach(extract_context(carrier or {}))
    try:
        with trace.get_tracer("pixsim").start_as_current_span(name):
            yield
    finally:
        otel_context.detach(token)
