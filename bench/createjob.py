"""CreateJob against the database's own limit.

ghz drives CreateJob through the job service's real gRPC port (JWT, validation, the job row
and its outbox row in one statement, the relay publishing to Kafka). Side by side, on the
same PostgreSQL cluster, pgbench runs the same SQL (that statement, with literals) at the
same concurrency, against a database migrated exactly like the job service's. The pipeline
behind the job service is stopped after warm-up, so only CreateJob and its relay compete
with the database for the two cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BUF, GHZ, RESULTS, ROOT, bench_stack, percentile, verdict, write_result
from pixsim_job import repository as job_repository
from pixsim_local.processes import ManagedProcess
from pixsim_local.stack import SERVICES, service_command
from pixsim_local.whole_stack import WholeStack

REQUESTS = int(os.environ.get("BENCH_CREATEJOB_REQUESTS", "20000"))
CONCURRENCY = 50
# Job service processes sharing the port (gRPC sets SO_REUSEPORT; the kernel spreads
# connections over them).
PROCESSES = int(os.environ.get("BENCH_JOB_PROCESSES", "2"))
CONNECTIONS = 8
TARGET_RATIO, TARGET_P99_MS = 0.2, 100.0  # issue 22
JOB = next(spec for spec in SERVICES if spec.name == "job")

# What CreateJob's statement (pixsim_job.repository.INSERT_UNLESS_BUDGETED, one statement in
# autocommit for a caller without a budget) is sent with, as SQL literals for pgbench: the
# same statement, the same plan, a new job and event each time.
PGBENCH_VALUES = {
    "id": "gen_random_uuid()",
    "user_id": "'bench-' || :user",
    "operation_type": "1",
    "provider_id": "'pixverse'",
    "request": """'{"prompt": "a red fox", "inputs": [], "params": {}, "fallbacks": []}'""",
    "state": "'PENDING'",
    "request_id": "NULL",
    "request_hash": "NULL",
    "start_deadline_time": "NULL",
    "run_deadline_time": "NULL",
    "labels": "'{}'",
    "priority": "'NORMAL'",
    "webhook": "NULL",
    "estimated_credits": "10",
    "estimated_micros": "50000",
    "hold_micros": "50000",
    "event_id": "gen_random_uuid()::text",
    "topic": "'pixsim.job.submitted.v1'",
    "key": "'key'",
    # A job.submitted of a job id's size.
    "payload": "'\\x0a2430623163326433652d303030302d343030302d383030302d303030303030303030303031'",
    "headers": """'{"ce_type": "pixsim.job.submitted.v1"}'""",
}


def pgbench_script() -> str:
    names = [*job_repository.SUBMIT_COLUMNS, *job_repository.EVENT_COLUMNS]
    statement = re.sub(
        r"\$(\d+)",
        lambda found: PGBENCH_VALUES[names[int(found.group(1)) - 1]],
        job_repository.INSERT_UNLESS_BUDGETED,
    )
    return "\\set user random(1, 1000000)\n" + statement.strip() + ";\n"


async def start_more_job_processes(stack: WholeStack, count: int) -> None:
    processes = []
    for index in range(count):
        log = stack.services.logs / f"job-{index + 2}.log"
        process = ManagedProcess(
            f"job-{index + 2}", service_command(JOB, "serve"), log, env=stack.services.envs["job"]
        )
        # Registered with the stack, so they stop with it however the benchmark ends.
        stack.services.processes[process.name] = process
        processes.append(process)
    deadline = time.monotonic() + 60
    for process in processes:
        while b'"serving"' not in process.log_path.read_bytes():
            process.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{process.name} did not start serving")
            await asyncio.sleep(0.2)


def protoset(directory: Path) -> Path:
    """The API's descriptors, built by buf from protos/ (ghz does not speak the v1alpha
    reflection the services offer)."""
    path = directory / "pixsim.binpb"
    if not path.exists():
        subprocess.run([str(BUF), "build", "-o", str(path)], check=True, cwd=ROOT)
    return path


def ghz(address: str, token: str, requests: int) -> dict[str, Any]:
    data = {
        "job": {
            "provider_id": "pixverse",
            "operation_type": "OPERATION_TYPE_TEXT_TO_VIDEO",
            "prompt": "a red fox",
        }
    }
    answer = subprocess.run(
        [
            str(GHZ),
            "--insecure",
            "--protoset",
            str(protoset(RESULTS)),
            "--call",
            "pixsim.job.v1.JobService.CreateJob",
            "-d",
            json.dumps(data),
            "-m",
            json.dumps({"authorization": f"Bearer {token}"}),
            "-c",
            str(CONCURRENCY),
            "--connections",
            str(CONNECTIONS),
            "-n",
            str(requests),
            "-O",
            "json",
            address,
        ],
        capture_output=True,
        text=True,
    )
    if answer.returncode != 0:
        raise RuntimeError(f"ghz failed: {answer.stderr or answer.stdout}")
    report = json.loads(answer.stdout)
    latencies = {
        item["percentage"]: item["latency"] / 1e6 for item in report["latencyDistribution"]
    }
    return {
        "per_second": report["rps"],
        "p50_ms": latencies[50],
        "p95_ms": latencies[95],
        "p99_ms": latencies[99],
        "status_codes": report.get("statusCodeDistribution", {}),
    }


def pgbench(url: str, transactions: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "createjob.sql"
        script.write_text(pgbench_script())
        answer = subprocess.run(
            [
                "pgbench",
                "-n",
                # Prepared, as the job service's driver sends it (asyncpg prepares each
                # statement once per connection): the database's best for this SQL.
                "--protocol=prepared",
                "-c",
                str(CONCURRENCY),
                "-j",
                "2",
                "-t",
                str(transactions // CONCURRENCY),
                "-f",
                str(script),
                "--log",
                f"--log-prefix={scratch}/tx",
                url,
            ],
            check=True,
            capture_output=True,
            text=True,
            cwd=scratch,
        )
        # Each line of the per-transaction logs: client, transaction, latency in µs, ...
        latencies = [
            int(line.split()[2]) / 1000
            for log in Path(scratch).glob("tx*")
            for line in log.read_text().splitlines()
        ]
    found = re.search(r"tps = ([\d.]+) \(without initial connection time\)", answer.stdout)
    assert found, answer.stdout
    return {
        "per_second": float(found.group(1)),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
    }


async def main() -> dict[str, Any]:
    async with bench_stack({"CAPABILITIES_TTL_SECONDS": "3600"}) as stack:
        await start_more_job_processes(stack, PROCESSES - 1)
        token = stack.alice[0][1].removeprefix("Bearer ")
        address = stack.services.address("job")
        # Warm every job process (its provider catalog, its pool), then stop the pipeline.
        await asyncio.to_thread(ghz, address, token, 2000)
        for name in ("provider-gateway", "asset", "scene"):
            await asyncio.to_thread(stack.services.processes[name].stop)
        service = await asyncio.to_thread(ghz, address, token, REQUESTS)

        baseline_db = await stack.services.infra.postgres.create_service_database("bench_pgbench")
        env = {**stack.services.envs["job"], "PIXSIM_JOB_DATABASE_URL": baseline_db.url}
        migrate = ManagedProcess(
            "pgbench-migrate",
            service_command(JOB, "migrate"),
            stack.services.logs / "m.log",
            env=env,
        )
        if await asyncio.to_thread(migrate.process.wait) != 0:
            raise RuntimeError(migrate.log_tail())
        database = await asyncio.to_thread(pgbench, baseline_db.url, REQUESTS)

    ratio = service["per_second"] / database["per_second"]
    figures = {
        "requests": REQUESTS,
        "concurrency": CONCURRENCY,
        "job_processes": PROCESSES,
        "createjob": service,
        "pgbench": database,
        "ratio": ratio,
        "target": {"ratio": TARGET_RATIO, "p99_ms": TARGET_P99_MS},
    }
    write_result("createjob", figures)
    print(
        f"\n1. CreateJob against the database: {REQUESTS} requests, {CONCURRENCY} concurrent, "
        f"{PROCESSES} job service process(es) on one port (SO_REUSEPORT)"
    )
    print(f"{'':<22}{'per s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    for label, row in (("CreateJob (ghz)", service), ("same SQL (pgbench)", database)):
        print(
            f"{label:<22}{row['per_second']:>9.0f}{row['p50_ms']:>9.1f}"
            f"{row['p95_ms']:>9.1f}{row['p99_ms']:>9.1f}"
        )
    holds = ratio >= TARGET_RATIO and service["p99_ms"] <= TARGET_P99_MS
    print(
        f"createjob: ratio {ratio:.3f} (target >= {TARGET_RATIO}), p99 {service['p99_ms']:.1f} ms "
        f"(target <= {TARGET_P99_MS:.0f}): {verdict(holds)}"
    )
    return figures
