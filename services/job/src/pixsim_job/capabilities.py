"""What the job service asks of the provider gateway over gRPC, with the caller's token:
what a provider can do (cached) and a job's live status; and the check of a job's request
against a provider's capabilities (pure)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import grpc
from google.protobuf import struct_pb2

from pixsim.job.v1 import job_service_pb2 as job_pb
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim.provider.v1 import provider_gateway_service_pb2_grpc as gw_grpc
from pixsim.types.v1 import types_pb2
from pixsim_common.clients import bearer, from_peer
from pixsim_common.errors import FailedPrecondition, FieldViolation, InvalidArgument
from pixsim_common.money import micros_of


class ProviderCatalog:
    """`GetProvider` answers, cached for `ttl` seconds per provider."""

    def __init__(self, channel: grpc.aio.Channel, ttl: float = 60.0) -> None:
        self._stub = gw_grpc.ProviderGatewayServiceStub(channel)
        self._ttl = ttl
        self._cache: dict[str, tuple[float, gw_pb.Provider]] = {}

    async def get(self, provider_id: str, token: str) -> gw_pb.Provider:
        cached = self._cache.get(provider_id)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        try:
            provider = await self._stub.GetProvider(
                gw_pb.GetProviderRequest(name=f"providers/{provider_id}"),
                metadata=bearer(token),
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise InvalidArgument(
                    f"unknown provider {provider_id!r}",
                    [FieldViolation("job.provider_id", "no such provider", "UNKNOWN_PROVIDER")],
                ) from None
            raise from_peer(error, "provider gateway") from error
        self._cache[provider_id] = (time.monotonic(), provider)
        return provider


class CostEstimates:
    """`EstimateCost` answers: a job's estimate in its provider's credits and in micros,
    cached for `ttl` seconds by what an estimate depends on (provider, operation, params
    and the inputs' roles), so a batch of like jobs asks once."""

    MAX_CACHED = 4096

    def __init__(self, channel: grpc.aio.Channel, ttl: float = 60.0) -> None:
        self._stub = gw_grpc.ProviderGatewayServiceStub(channel)
        self._ttl = ttl
        self._cache: OrderedDict[bytes, tuple[float, int, int]] = OrderedDict()

    async def of(self, job: job_pb.Job, token: str) -> tuple[int, int]:
        key = job_pb.Job(
            provider_id=job.provider_id,
            operation_type=job.operation_type,
            params=job.params,
            inputs=[types_pb2.GenerationInput(role=i.role) for i in job.inputs],
        ).SerializeToString(deterministic=True)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1], cached[2]
        try:
            cost = await self._stub.EstimateCost(
                gw_pb.EstimateCostRequest(
                    provider=f"providers/{job.provider_id}",
                    operation_type=job.operation_type,
                    prompt=job.prompt,
                    inputs=job.inputs,
                    params=job.params,
                ),
                metadata=bearer(token),
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            raise from_peer(error, "provider gateway") from error
        self._cache[key] = (time.monotonic(), cost.credits, micros_of(cost.price))
        self._cache.move_to_end(key)
        while len(self._cache) > self.MAX_CACHED:
            self._cache.popitem(last=False)
        return cost.credits, micros_of(cost.price)


class LiveStatus:
    """A job's place in line and progress, asked of the gateway (with the caller's token)
    when the job is read; None when the gateway does not answer in time, and the job is
    answered without them rather than late."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float = 1.0) -> None:
        self._stub = gw_grpc.ProviderGatewayServiceStub(channel)
        self._timeout = timeout

    async def of(self, job_id: str, token: str) -> gw_pb.QueueStatus | None:
        try:
            status: gw_pb.QueueStatus = await self._stub.GetQueueStatus(
                gw_pb.GetQueueStatusRequest(job=f"jobs/{job_id}"),
                metadata=bearer(token),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError:
            return None
        return status


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    return getattr(value, kind) if kind else None


def _as_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_request(job: job_pb.Job, provider: gw_pb.Provider) -> gw_pb.OperationCapability:
    """The provider's capability for the job's operation: FAILED_PRECONDITION (with the
    supported operations) for an operation the provider lacks; INVALID_ARGUMENT naming every
    field that does not fit what it supports."""
    capability = next(
        (op for op in provider.operations if op.operation_type == job.operation_type), None
    )
    if capability is None:
        supported = [types_pb2.OperationType.Name(op.operation_type) for op in provider.operations]
        raise FailedPrecondition(
            f"{provider.name} does not support {types_pb2.OperationType.Name(job.operation_type)}",
            reason="UNSUPPORTED_OPERATION",
            metadata={"provider": provider.name, "supported_operations": ",".join(supported)},
        )
    violations: list[FieldViolation] = []
    if capability.prompt_required and not job.prompt.strip():
        violations.append(
            FieldViolation("job.prompt", "this operation needs a prompt", "PROMPT_REQUIRED")
        )
    roles = [i.role for i in job.inputs]
    for role in capability.required_inputs:
        if role in roles:
            roles.remove(role)
        else:
            violations.append(
                FieldViolation(
                    "job.inputs", f"needs a {types_pb2.InputRole.Name(role)}", "INPUT_REQUIRED"
                )
            )
    specs = {spec.name: spec for spec in capability.parameters}
    for name, raw in job.params.fields.items():
        spec = specs.get(name)
        field = f"job.params.{name}"
        if spec is None:
            violations.append(FieldViolation(field, "unknown parameter", "UNKNOWN_PARAMETER"))
            continue
        problem = _problem(spec, _value(raw))
        if problem:
            violations.append(FieldViolation(field, problem, "INVALID_PARAMETER"))
    for spec in capability.parameters:
        if spec.required and spec.name not in job.params.fields:
            violations.append(
                FieldViolation(f"job.params.{spec.name}", "required", "PARAMETER_REQUIRED")
            )
    if violations:
        raise InvalidArgument(
            f"the request does not fit {provider.name}: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations[:3]),
            violations,
            reason="INVALID_FOR_PROVIDER",
        )
    return capability


def _problem(spec: gw_pb.ParameterSpec, value: Any) -> str | None:
    kinds = {
        gw_pb.ParameterSpec.TYPE_STRING: lambda v: isinstance(v, str),
        gw_pb.ParameterSpec.TYPE_INTEGER: lambda v: isinstance(v, float) and v.is_integer(),
        gw_pb.ParameterSpec.TYPE_NUMBER: lambda v: isinstance(v, float),
        gw_pb.ParameterSpec.TYPE_BOOLEAN: lambda v: isinstance(v, bool),
    }
    fits = kinds.get(spec.type)
    if fits is not None and not fits(value):
        return f"must be {gw_pb.ParameterSpec.Type.Name(spec.type)[5:].lower()}"
    if spec.allowed_values and _as_text(value) not in spec.allowed_values:
        return f"must be one of {', '.join(spec.allowed_values)}"
    if isinstance(value, float):
        if spec.HasField("minimum") and value < spec.minimum:
            return f"must be at least {spec.minimum:g}"
        if spec.HasField("maximum") and value > spec.maximum:
            return f"must be at most {spec.maximum:g}"
    return None


async def check_fallbacks(
    job: job_pb.Job, catalog: ProviderCatalog, token: str
) -> list[gw_pb.OperationCapability]:
    """Each fallback's capability for the job's operation, checked as the job's own provider
    is (with the fallback's params): INVALID_ARGUMENT naming `job.fallbacks[i]...` for
    every one that cannot do it, an unknown provider or an unsupported operation included."""
    capabilities: list[gw_pb.OperationCapability] = []
    violations: list[FieldViolation] = []
    for index, fallback in enumerate(job.fallbacks):
        at = f"job.fallbacks[{index}]"
        if fallback.provider_id == job.provider_id:
            violations.append(
                FieldViolation(f"{at}.provider_id", "is the job's own provider", "SAME_PROVIDER")
            )
            continue
        candidate = job_pb.Job()
        candidate.CopyFrom(job)
        candidate.provider_id = fallback.provider_id
        candidate.params.CopyFrom(fallback.params)
        try:
            provider = await catalog.get(fallback.provider_id, token)
            capabilities.append(check_request(candidate, provider))
        except InvalidArgument as refused:
            violations += [
                FieldViolation(
                    v.field.replace("job.params", f"{at}.params").replace(
                        "job.provider_id", f"{at}.provider_id"
                    ),
                    v.description,
                    v.reason,
                )
                for v in refused.violations
            ]
        except FailedPrecondition as unsupported:
            violations.append(
                FieldViolation(f"{at}.provider_id", unsupported.message, unsupported.reason)
            )
    if violations:
        raise InvalidArgument(
            "a fallback cannot do this job: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations[:3]),
            violations,
            reason="INVALID_FALLBACK",
        )
    return capabilities
