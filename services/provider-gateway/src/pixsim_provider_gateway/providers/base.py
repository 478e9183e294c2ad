"""The `Provider` interface every adapter implements, and the types it speaks.

Pure: no I/O here. An adapter maps PixSim7's explicit operations to one provider's HTTP
API, and classifies every failure into the closed set of `ErrorKind`s (the domain's) the
gateway acts on.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeAlias

from pixsim.types.v1 import types_pb2
from pixsim_provider_gateway.domain import Charge, ErrorKind, MediaOutput

OperationType: TypeAlias = types_pb2.OperationType.ValueType
InputRole: TypeAlias = types_pb2.InputRole.ValueType
MediaType: TypeAlias = types_pb2.MediaType.ValueType


class ProviderError(Exception):
    """A failure the gateway can act on: retry, cool the account down, or fail the job."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        retry_after: float | None = None,
        provider_code: str = "",
    ) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self.provider_code = provider_code


class TaskUnknown(ProviderError):
    """The provider has no task by this id (its status call answered 404): nothing runs
    there, and nothing is billed for it."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.TRANSIENT, message, provider_code="404")


class UnsupportedOperation(Exception):
    def __init__(
        self, provider_id: str, operation: OperationType, supported: Sequence[OperationType]
    ) -> None:
        super().__init__(
            f"{provider_id} does not support {types_pb2.OperationType.Name(operation)}"
        )
        self.provider_id = provider_id
        self.operation = operation
        self.supported = list(supported)


class ParamType(StrEnum):
    STRING = "STRING"
    INTEGER = "INTEGER"
    NUMBER = "NUMBER"
    BOOLEAN = "BOOLEAN"


@dataclass(frozen=True, slots=True)
class ParameterSpec:
    name: str
    type: ParamType
    required: bool = False
    allowed: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    default: Any = None
    description: str = ""

    def problem(self, value: Any) -> str | None:
        """Why `value` is not acceptable, or None."""
        expected = {
            ParamType.STRING: (str,),
            ParamType.INTEGER: (int,),
            ParamType.NUMBER: (int, float),
            ParamType.BOOLEAN: (bool,),
        }[self.type]
        if isinstance(value, float) and self.type is ParamType.INTEGER and value.is_integer():
            value = int(value)  # JSON numbers (protobuf Struct) arrive as floats
        if isinstance(value, bool) and self.type is not ParamType.BOOLEAN:
            return f"must be {self.type.value.lower()}"
        if not isinstance(value, expected):
            return f"must be {self.type.value.lower()}"
        if self.allowed and value not in self.allowed:
            return f"must be one of {', '.join(str(a) for a in self.allowed)}"
        if isinstance(value, int | float):
            if self.minimum is not None and value < self.minimum:
                return f"must be at least {self.minimum:g}"
            if self.maximum is not None and value > self.maximum:
                return f"must be at most {self.maximum:g}"
        return None


@dataclass(frozen=True, slots=True)
class InputLimit:
    """What a provider's intake takes for one role (its documented limits)."""

    role: InputRole
    media_types: tuple[MediaType, ...]
    max_size_bytes: int = 0
    max_side: int = 0
    max_duration_seconds: float = 0.0


MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class OperationSpec:
    operation: OperationType
    parameters: tuple[ParameterSpec, ...] = ()
    # Inputs the operation needs, by role (a role listed twice is needed twice).
    required_inputs: tuple[InputRole, ...] = ()
    prompt_required: bool = True
    max_prompt_length: int = 2000
    # Roles accepted beyond the required ones, and how many inputs in all.
    optional_inputs: tuple[InputRole, ...] = ()
    max_inputs: int = 0
    input_limits: tuple[InputLimit, ...] = ()


@dataclass(frozen=True, slots=True)
class Capabilities:
    provider_id: str
    display_name: str
    operations: tuple[OperationSpec, ...]
    supports_cancel: bool
    # Its status answers say how far a task has got (Runway's `progress`).
    reports_progress: bool = False

    def spec(self, operation: OperationType) -> OperationSpec:
        for spec in self.operations:
            if spec.operation == operation:
                return spec
        raise UnsupportedOperation(
            self.provider_id, operation, [s.operation for s in self.operations]
        )


@dataclass(frozen=True, slots=True)
class GenerationInput:
    """An input as the caller gave it: a URL, or one of their assets (and which of its
    files, for a video given where an image is wanted)."""

    role: InputRole
    uri: str = ""
    asset: str = ""
    variant: str = ""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What the caller asked for, in PixSim7's terms."""

    operation: OperationType
    prompt: str = ""
    inputs: tuple[GenerationInput, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)

    def inputs_with(self, role: InputRole) -> list[dict[str, int]]:
        """Placeholders (`{"$input": n}`) of this role's inputs, filled at execute time with
        whatever the provider's intake takes of input n (`fill_inputs`)."""
        return [input_ref(i) for i, given in enumerate(self.inputs) if given.role == role]


def input_ref(index: int) -> dict[str, int]:
    return {"$input": index}


class InputFile(Protocol):
    """One input's bytes as a provider's intake may want them, got only when asked for: a
    URL it can fetch now (the caller's own, or a presigned one minted now), or the bytes."""

    @property
    def mime_type(self) -> str: ...

    @property
    def size_bytes(self) -> int: ...

    @property
    def file_name(self) -> str: ...

    async def url(self) -> str | None: ...

    async def read(self) -> bytes: ...


async def data_uri(file: InputFile) -> str:
    """`data:<type>;base64,...` of an input (fal's `encode_file`, Runway's small inputs)."""
    return f"data:{file.mime_type};base64,{base64.b64encode(await file.read()).decode()}"


async def fill_inputs(
    body: Any, inputs: Sequence[InputFile], render: Callable[[InputFile], Awaitable[Any]]
) -> Any:
    """`body` with each `{"$input": n}` replaced by what `render` makes of input n."""
    if isinstance(body, dict):
        if set(body) == {"$input"}:
            return await render(inputs[int(body["$input"])])
        return {key: await fill_inputs(value, inputs, render) for key, value in body.items()}
    if isinstance(body, list):
        return [await fill_inputs(item, inputs, render) for item in body]
    return body


@dataclass(frozen=True, slots=True)
class Credentials:
    api_key: str

    def __repr__(self) -> str:  # never in a log line or a traceback
        return "Credentials(api_key=***)"


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A provider accepted the task."""

    provider_job_id: str
    estimated_cost: int | None = None


class TaskState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)


@dataclass(frozen=True, slots=True)
class ProviderStatusResult:
    state: TaskState
    progress: float | None = None
    outputs: tuple[MediaOutput, ...] = ()
    error: ProviderError | None = None
    cost: int | None = None
    # The provider's own word for the task's state (Runway's THROTTLED, fal's IN_QUEUE), and
    # its place in the provider's own queue where one is reported (fal's queue_position).
    provider_state: str = ""
    queue_position: int | None = None


class Provider(Protocol):
    """One provider's adapter (DESIGN.md section 4)."""

    provider_id: str

    def capabilities(self) -> Capabilities: ...

    def map_parameters(
        self, operation: OperationType, request: GenerationRequest
    ) -> dict[str, Any]:
        """The provider's request body for `request`; `ProviderError(INVALID_PARAMETERS)` or
        `UnsupportedOperation` when it cannot be made."""
        ...

    def estimate_cost(self, payload: Mapping[str, Any]) -> int:
        """Credits to reserve before the call; settled with the provider's actual cost."""
        ...

    def charge(self, status: ProviderStatusResult, reserved: int) -> Charge:
        """What the provider bills for a task that ended as `status` (`reserved`: the
        estimate held for it): its own rule, from its docs (docs/costs.md)."""
        ...

    async def execute(
        self,
        operation: OperationType,
        credentials: Credentials,
        payload: Mapping[str, Any],
        inputs: Sequence[InputFile] = (),
    ) -> GenerationResult:
        """Send the task; `inputs` are the request's inputs, by index, for the payload's
        placeholders."""
        ...

    async def check_status(
        self, credentials: Credentials, provider_job_id: str
    ) -> ProviderStatusResult: ...

    async def cancel(self, credentials: Credentials, provider_job_id: str) -> None:
        """Cancel at the provider; `NotImplementedError` where the provider cannot."""
        ...

    async def check_account(self, credentials: Credentials) -> int | None:
        """A cheap call that proves the key works: the account's credit balance where the
        provider has a balance API, else None; `ProviderError(ACCOUNT_INVALID)` for a key
        the provider refuses."""
        ...


def check_request(capabilities: Capabilities, request: GenerationRequest) -> dict[str, Any]:
    """Validate `request` against the operation's spec; the parameters with defaults filled.

    Raises `UnsupportedOperation`, or `ProviderError(INVALID_PARAMETERS)` naming every problem.
    """
    spec = capabilities.spec(request.operation)
    problems: list[str] = []
    if spec.prompt_required and not request.prompt.strip():
        problems.append("prompt: required")
    if len(request.prompt) > spec.max_prompt_length:
        problems.append(f"prompt: at most {spec.max_prompt_length} characters")
    remaining = [i.role for i in request.inputs]
    for role in spec.required_inputs:
        if role in remaining:
            remaining.remove(role)
        else:
            problems.append(f"inputs: needs a {types_pb2.InputRole.Name(role)}")
    extra = [r for r in remaining if r not in spec.optional_inputs]
    if extra:
        problems.append(
            "inputs: unexpected " + ", ".join(types_pb2.InputRole.Name(r) for r in extra)
        )
    if spec.max_inputs and len(request.inputs) > spec.max_inputs:
        problems.append(f"inputs: at most {spec.max_inputs}")
    known = {p.name: p for p in spec.parameters}
    values: dict[str, Any] = {}
    for name, value in request.params.items():
        parameter = known.get(name)
        if parameter is None:
            problems.append(f"params.{name}: unknown parameter")
            continue
        problem = parameter.problem(value)
        if problem:
            problems.append(f"params.{name}: {problem}")
        else:
            is_whole = isinstance(value, float) and value.is_integer()
            values[name] = int(value) if parameter.type is ParamType.INTEGER and is_whole else value
    for parameter in spec.parameters:
        if parameter.name not in values:
            if parameter.required and parameter.default is None:
                problems.append(f"params.{parameter.name}: required")
            elif parameter.default is not None:
                values[parameter.name] = parameter.default
    if problems:
        raise ProviderError(ErrorKind.INVALID_PARAMETERS, "; ".join(problems))
    return values
