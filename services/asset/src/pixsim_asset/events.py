"""The asset service's consumer: a finished generation becomes an asset (thin): staged
outside the consumer's transaction, recorded inside it."""

from __future__ import annotations

from pixsim_asset.service import AssetService
from pixsim_common import topics
from pixsim_common.consumer import Subscription


def subscriptions(service: AssetService) -> list[Subscription]:
    # The download happens in `stage_generation`, before the consumer's transaction.
    return [
        Subscription(
            topics.GENERATION_COMPLETED,
            service.record_generation,
            prepare=service.stage_generation,
            discard=service.discard_generation,
        )
    ]
