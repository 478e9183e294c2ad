"""What the benchmarks share: the stack over throwaway infrastructure, provider accounts
shaped for a benchmark, percentiles, results files, and peak memory of the services."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx

from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim_local.whole_stack import WholeStack, whole_stack_of_its_own

ROOT = Path(__file__).parent.parent
RESULTS = ROOT / "bench" / "results"
BIN = ROOT / ".cache" / "bin"
GHZ, BUF, TEMPORAL = BIN / "ghz", BIN / "buf", BIN / "temporal"


RESULTS.mkdir(exist_ok=True)


def bench_stack(
    settings: Mapping[str, str] | None = None,
) -> AbstractAsyncContextManager[WholeStack]:
    """The whole stack over a PostgreSQL cluster (fsync off, as in the tests) and a broker
    of its own, gone afterwards. INFO logs as in production (one access line per RPC);
    spans are made but not exported."""
    return whole_stack_of_its_own({"OTEL_EXPORTER": "none", **(settings or {})})


async def sim_key(stack: WholeStack, key: str, finish_ms: int) -> None:
    """A simulator API key of the benchmark's own whose tasks take `finish_ms`."""
    async with httpx.AsyncClient() as client:
        answer = await client.put(
            f"{stack.services.simulator_url}/_sim/keys/{key}", json={"finish_ms": finish_ms}
        )
        answer.raise_for_status()


async def use_accounts(
    stack: WholeStack, accounts: Sequence[tuple[str, int]], finish_ms: int
) -> None:
    """Replace the seeded accounts by `accounts` ((provider, max_concurrency) each, with a
    simulator key of its own whose tasks take `finish_ms`)."""
    admin = stack.auth("bench-admin", admin=True)
    listed = await stack.gateway.ListAccounts(gw_pb.ListAccountsRequest(), metadata=admin)
    for account in listed.accounts:
        await stack.gateway.DisableAccount(
            gw_pb.DisableAccountRequest(name=account.name), metadata=admin
        )
    for index, (provider, concurrency) in enumerate(accounts):
        key = f"bench-{provider}-{index}"
        await sim_key(stack, key, finish_ms)
        await stack.gateway.CreateAccount(
            gw_pb.CreateAccountRequest(
                account=gw_pb.Account(
                    provider_id=provider,
                    label=key,
                    credentials={"api_key": key},
                    credits=1_000_000_000,
                    max_concurrency=concurrency,
                )
            ),
            metadata=admin,
        )


def percentile(values: Sequence[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used so far (its exited children not included)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(root: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if f"\nPPid:\t{root}\n" in (entry / "status").read_text():
                    found.append(int(entry.name))
    return found


def cpu_of_tree(root: int) -> float:
    """CPU of a process and its children, live (PostgreSQL's backends under the postmaster,
    the asset service's decoders) and exited (counted once the parent has reaped them)."""
    fields = _stat_fields(root)
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    total = cpu_seconds(root) + reaped
    for child in children_of(root):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


def write_result(name: str, figures: dict[str, Any]) -> Path:
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    return path


def verdict(holds: bool) -> str:
    return "meets target" if holds else "MISSES target"
