"""Which adapters exist, built from settings. Adding a provider is one adapter module plus
one line in `ADAPTERS`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal

import httpx
from google.protobuf import duration_pb2, struct_pb2

from pixsim.provider.v1 import provider_gateway_service_pb2 as gateway_pb2
from pixsim_common.money import micros_of
from pixsim_provider_gateway.providers.base import Capabilities, ParamType, Provider
from pixsim_provider_gateway.providers.callbacks import CallbackReceiver, FalKeys, FalWebhooks
from pixsim_provider_gateway.providers.pika import PikaProvider
from pixsim_provider_gateway.providers.pixverse import PixverseProvider
from pixsim_provider_gateway.providers.runway import RunwayProvider
from pixsim_provider_gateway.settings import Settings

ADAPTERS: Mapping[str, Callable[[Settings], Provider]] = {
    "pixverse": lambda s: PixverseProvider(s.pixverse_base_url, timeout=s.provider_timeout),
    "runway": lambda s: RunwayProvider(
        s.runway_base_url, timeout=s.provider_timeout, api_version=s.runway_api_version
    ),
    "pika": lambda s: PikaProvider(
        s.pika_base_url, timeout=s.provider_timeout, webhook_url=callback_url(s, "pika")
    ),
}


def callback_url(settings: Settings, provider_id: str) -> str:
    """Where `provider_id` is asked to push a task's end, or "" when callbacks are off."""
    base = settings.callback_base_url.rstrip("/")
    return f"{base}/callbacks/{provider_id}" if base else ""


class UnknownProvider(KeyError):
    pass


class ProviderRegistry:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        callbacks: Mapping[str, CallbackReceiver] | None = None,
        keys_client: httpx.AsyncClient | None = None,
        credit_prices: Mapping[str, Decimal] | None = None,
    ) -> None:
        self._providers = dict(providers)
        self._credit_prices = {
            name: micros_of(price) for name, price in (credit_prices or {}).items()
        }
        self._callbacks = dict(callbacks or {})
        self._keys_client = keys_client

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        providers = {name: build(settings) for name, build in ADAPTERS.items()}
        prices = settings.credit_prices
        if not settings.callback_base_url:
            return cls(providers, credit_prices=prices)
        # The providers' signing keys come from hosts of their own, not their APIs'.
        keys_client = httpx.AsyncClient(timeout=httpx.Timeout(settings.provider_timeout))
        pika = providers["pika"]
        assert isinstance(pika, PikaProvider)
        callbacks: dict[str, CallbackReceiver] = {
            "pika": FalWebhooks(
                FalKeys(settings.pika_webhook_jwks_url, keys_client), pika.webhook_notice
            )
        }
        return cls(providers, callbacks, keys_client, prices)

    def credit_price_micros(self, provider_id: str) -> int:
        """What one of `provider_id`'s credits costs, in millionths of a dollar (the price
        table, CREDIT_PRICES); 0 for a provider it does not name."""
        return self._credit_prices.get(provider_id, 0)

    def callbacks(self, provider_id: str) -> CallbackReceiver | None:
        """How `provider_id`'s callbacks are verified and read; None: it sends none."""
        return self._callbacks.get(provider_id)

    def get(self, provider_id: str) -> Provider:
        try:
            return self._providers[provider_id]
        except KeyError:
            raise UnknownProvider(provider_id) from None

    def __iter__(self) -> Iterator[Provider]:
        return iter(self._providers.values())

    async def aclose(self) -> None:
        for provider in self._providers.values():
            close = getattr(provider, "aclose", None)
            if close is not None:
                await close()
        if self._keys_client is not None:
            await self._keys_client.aclose()


_PARAM_TYPES = {
    ParamType.STRING: gateway_pb2.ParameterSpec.TYPE_STRING,
    ParamType.INTEGER: gateway_pb2.ParameterSpec.TYPE_INTEGER,
    ParamType.NUMBER: gateway_pb2.ParameterSpec.TYPE_NUMBER,
    ParamType.BOOLEAN: gateway_pb2.ParameterSpec.TYPE_BOOLEAN,
}


def _value(python: object) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if isinstance(python, bool):
        value.bool_value = python
    elif isinstance(python, int | float):
        value.number_value = float(python)
    elif python is not None:
        value.string_value = str(python)
    return value


def capabilities_to_proto(capabilities: Capabilities) -> gateway_pb2.Provider:
    """The contract's `Provider` resource for an adapter's capabilities."""
    return gateway_pb2.Provider(
        name=f"providers/{capabilities.provider_id}",
        display_name=capabilities.display_name,
        supports_cancel=capabilities.supports_cancel,
        operations=[
            gateway_pb2.OperationCapability(
                operation_type=spec.operation,
                required_inputs=list(spec.required_inputs),
                prompt_required=spec.prompt_required,
                parameters=[
                    gateway_pb2.ParameterSpec(
                        name=p.name,
                        type=_PARAM_TYPES[p.type],
                        required=p.required,
                        allowed_values=[str(a) for a in p.allowed],
                        minimum=p.minimum,
                        maximum=p.maximum,
                        default_value=_value(p.default) if p.default is not None else None,
                        description=p.description,
                    )
                    for p in spec.parameters
                ],
                input_limits=[
                    gateway_pb2.InputLimits(
                        role=limit.role,
                        media_types=list(limit.media_types),
                        max_size_bytes=limit.max_size_bytes,
                        max_side=limit.max_side,
                        max_duration=duration_pb2.Duration(seconds=int(limit.max_duration_seconds))
                        if limit.max_duration_seconds
                        else None,
                    )
                    for limit in spec.input_limits
                ],
            )
            for spec in capabilities.operations
        ],
    )
