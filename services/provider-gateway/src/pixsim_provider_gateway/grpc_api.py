"""`pixsim.provider.v1.ProviderGatewayService`: thin handlers over the registry, the account
table and the submissions. The guard has authenticated the caller and validated the request;
account methods are admin-only by `main.ADMIN_METHODS`."""

from __future__ import annotations

import time
from typing import Any

from google.protobuf import json_format
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim.provider.v1 import provider_gateway_service_pb2 as pb
from pixsim.provider.v1 import provider_gateway_service_pb2_grpc as pb_grpc
from pixsim.types.v1 import types_pb2
from pixsim_common.auth import current_identity
from pixsim_common.errors import NotFound
from pixsim_common.money import money
from pixsim_common.pagination import PageTokens
from pixsim_common.timestamps import to_timestamp
from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.crypto import CredentialCipher
from pixsim_provider_gateway.domain import ProviderGate, SubmissionState
from pixsim_provider_gateway.events import generation_request
from pixsim_provider_gateway.providers.base import Provider
from pixsim_provider_gateway.providers.registry import (
    ProviderRegistry,
    capabilities_to_proto,
)
from pixsim_provider_gateway.service.accounts import Accounts
from pixsim_provider_gateway.service.providers import Providers


def account_to_proto(row: Row[Any]) -> pb.Account:
    """Everything but the credentials, which are write-only."""
    return pb.Account(
        name=f"accounts/{row.id}",
        provider_id=row.provider_id,
        label=row.label,
        credits=row.credits,
        max_concurrency=row.max_concurrency,
        priority=row.priority,
        state=pb.Account.State.Value(f"STATE_{row.state}"),
        cooldown_until=to_timestamp(row.cooldown_until),
        in_flight=row.in_flight,
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
        provider_credits=row.provider_credits,
        provider_credits_time=to_timestamp(row.provider_credits_time),
        check_time=to_timestamp(row.check_time),
    )


def provider_to_proto(provider: Provider, gate: ProviderGate) -> pb.Provider:
    """What the provider can do, and whether its jobs are sent now."""
    made = capabilities_to_proto(provider.capabilities())
    made.MergeFrom(
        pb.Provider(
            state=pb.Provider.STATE_PAUSED if gate.paused else pb.Provider.STATE_ACTIVE,
            pause_time=to_timestamp(gate.pause_time),
            pause_reason=gate.pause_reason,
            circuit=pb.Provider.Circuit.Value(f"CIRCUIT_{gate.circuit.value}"),
            circuit_open_until=to_timestamp(gate.open_until),
            consecutive_failures=gate.consecutive_failures,
        )
    )
    return made


def public_state(stored: str) -> pb.Submission.State.ValueType:
    """The contract's state of a stored one: SUBMITTING is RUNNING to a caller."""
    return pb.Submission.State.Value(f"STATE_{'RUNNING' if stored == 'SUBMITTING' else stored}")


def submission_to_proto(row: Row[Any]) -> pb.Submission:
    payload = None
    if row.payload is not None:
        payload = json_format.ParseDict(row.payload, pb.Submission().payload)
    return pb.Submission(
        name=f"submissions/{row.id}",
        job=f"jobs/{row.job_id}",
        provider_id=row.provider_id,
        operation_type=row.operation_type,
        account=f"accounts/{row.account_id}" if row.account_id else "",
        payload=payload,
        provider_job_id=row.provider_job_id or "",
        state=public_state(row.state),
        retry_attempt=row.retry_attempt,
        previous_submission=(
            f"submissions/{row.previous_submission_id}" if row.previous_submission_id else ""
        ),
        error_code=types_pb2.GenerationErrorCode.Value(
            f"GENERATION_ERROR_CODE_{row.error_code or 'UNSPECIFIED'}"
        ),
        error_message=row.error_message,
        create_time=to_timestamp(row.create_time),
        submit_time=to_timestamp(row.submit_time),
        complete_time=to_timestamp(row.complete_time),
        update_time=to_timestamp(row.update_time),
        reserved_credits=row.reserved_credits,
        cost=(
            types_pb2.Cost(credits=row.settled_credits, price=money(row.settled_micros or 0))
            if row.settle_time is not None
            else None
        ),
        billing=types_pb2.Billing.Value(f"BILLING_{row.billing or 'UNSPECIFIED'}"),
        settle_time=to_timestamp(row.settle_time),
    )


def _id_of(name: str) -> str:
    return name.split("/", 1)[1]


class ProviderGatewayApi(pb_grpc.ProviderGatewayServiceServicer):
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        reads: async_sessionmaker[AsyncSession],
        registry: ProviderRegistry,
        cipher: CredentialCipher,
        tokens: PageTokens,
    ) -> None:
        self._reads = reads
        self._registry = registry
        self._cipher = cipher
        self._tokens = tokens
        self._positions = QueuePositions()
        self._accounts = Accounts(sessions, registry, cipher)
        self._providers = Providers(sessions, registry)

    # ---- providers ---------------------------------------------------------------------

    async def GetProvider(self, request: pb.GetProviderRequest, context: Any) -> pb.Provider:
        return provider_to_proto(*await self._providers.get(_id_of(request.name)))

    async def EstimateCost(self, request: pb.EstimateCostRequest, context: Any) -> types_pb2.Cost:
        asked = generation_request(
            request.operation_type,
            {
                "prompt": request.prompt,
                "inputs": [json_format.MessageToDict(i) for i in request.inputs],
                "params": json_format.MessageToDict(request.params),
            },
        )
        credits, micros = self._providers.estimate(_id_of(request.provider), asked)
        return types_pb2.Cost(credits=credits, price=money(micros))

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: Any
    ) -> pb.ListProvidersResponse:
        return pb.ListProvidersResponse(
            providers=[provider_to_proto(*pair) for pair in await self._providers.all()]
        )

    async def PauseProvider(self, request: pb.PauseProviderRequest, context: Any) -> pb.Provider:
        paused = await self._providers.pause(_id_of(request.name), request.reason)
        return provider_to_proto(*paused)

    async def ResumeProvider(self, request: pb.ResumeProviderRequest, context: Any) -> pb.Provider:
        return provider_to_proto(*await self._providers.resume(_id_of(request.name)))

    # ---- accounts (admin) --------------------------------------------------------------

    async def CreateAccount(self, request: pb.CreateAccountRequest, context: Any) -> pb.Account:
        return account_to_proto(await self._accounts.create(request.account))

    async def GetAccount(self, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        return account_to_proto(await self._accounts.get(_id_of(request.name)))

    async def ListAccounts(
        self, request: pb.ListAccountsRequest, context: Any
    ) -> pb.ListAccountsResponse:
        filters = {"provider_id": request.provider_id}
        async with self._reads() as session:
            rows, token = await self._tokens.fetch_page(
                session,
                repo.accounts_listed(request.provider_id),
                repo.accounts,
                request.page_token,
                request.page_size,
                filters,
            )
        return pb.ListAccountsResponse(
            accounts=[account_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateAccount(self, request: pb.UpdateAccountRequest, context: Any) -> pb.Account:
        updated = await self._accounts.update(request.account, list(request.update_mask.paths))
        return account_to_proto(updated)

    async def DisableAccount(self, request: pb.DisableAccountRequest, context: Any) -> pb.Account:
        return account_to_proto(await self._accounts.disable(_id_of(request.name)))

    async def EnableAccount(self, request: pb.EnableAccountRequest, context: Any) -> pb.Account:
        return account_to_proto(await self._accounts.enable(_id_of(request.name)))

    async def DrainAccount(self, request: pb.DrainAccountRequest, context: Any) -> pb.Account:
        return account_to_proto(await self._accounts.drain(_id_of(request.name)))

    # ---- submissions -------------------------------------------------------------------

    async def GetQueueStatus(
        self, request: pb.GetQueueStatusRequest, context: Any
    ) -> pb.QueueStatus:
        async with self._reads() as session:
            row = await repo.latest_submission(session, _id_of(request.job))
            if row is None or not _visible(row):
                raise NotFound(f"{request.job} has no attempt here", reason="JOB_NOT_FOUND")
            position = (
                await self._positions.of(session, row.provider_id, row.id)
                if row.state == SubmissionState.WAITING.value
                else None
            )
        state = public_state(row.state)
        if row.state == SubmissionState.WAITING.value and position is None:
            state = pb.Submission.STATE_UNSPECIFIED  # it left the queue meanwhile
        return pb.QueueStatus(
            job=request.job,
            state=state,
            queue_position=position or 0,
            queue_time=to_timestamp(row.create_time),
            progress=row.progress or 0.0,
            provider_state=row.provider_state,
            provider_queue_position=row.provider_queue_position or 0,
        )

    async def GetSubmission(self, request: pb.GetSubmissionRequest, context: Any) -> pb.Submission:
        async with self._reads() as session:
            row = await repo.get_submission(session, _id_of(request.name))
        if row is None or not _visible(row):
            raise NotFound(f"{request.name} does not exist", reason="SUBMISSION_NOT_FOUND")
        return submission_to_proto(row)

    async def ListSubmissions(
        self, request: pb.ListSubmissionsRequest, context: Any
    ) -> pb.ListSubmissionsResponse:
        filters = {"job": request.job}
        identity = current_identity()
        query = repo.submissions_listed(
            _id_of(request.job), None if identity.is_admin else identity.user_id
        )
        async with self._reads() as session:
            rows, token = await self._tokens.fetch_page(
                session, query, repo.submissions, request.page_token, request.page_size, filters
            )
        return pb.ListSubmissionsResponse(
            submissions=[submission_to_proto(r) for r in rows], next_page_token=token
        )


class QueuePositions:
    """Each provider's queue positions, computed in one query and kept for `ttl` seconds:
    any number of watchers cost one query per provider per `ttl`."""

    def __init__(self, ttl: float = 0.2) -> None:
        self._ttl = ttl
        self._cache: dict[str, tuple[float, dict[str, int]]] = {}

    async def of(self, session: AsyncSession, provider_id: str, submission_id: str) -> int | None:
        """The submission's position; a submission newer than the cached positions has
        them computed again, and one that is not waiting any more has none."""
        cached = self._cache.get(provider_id)
        fresh = cached is not None and time.monotonic() - cached[0] < self._ttl
        if cached is None or not fresh or submission_id not in cached[1]:
            positions = await repo.queue_positions(session, provider_id)
            self._cache[provider_id] = (time.monotonic(), positions)
        else:
            positions = cached[1]
        return positions.get(submission_id)


def _visible(row: Row[Any]) -> bool:
    identity = current_identity()
    return identity.is_admin or row.user_id == identity.user_id
