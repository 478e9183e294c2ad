"""Files are decoded (probed, thumbnailed, their frames taken) in worker processes of their
own, a bounded pool of them (decode_worker.py), never in the service's process.

A decoder parses whatever bytes a caller or a provider sent. In a worker, its libraries and
buffers stay out of the service's memory, an address-space limit bounds what one hostile
file can take, and a crash in the decoder costs that worker and the one file it had, not
the service. Workers are plain subprocesses speaking over their stdin and stdout (not
multiprocessing, whose spawned children import the parent's main module: the whole service).
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from pixsim_asset.probe import DecodeLimits, Inspection, ProbeFailed

log = structlog.get_logger("pixsim.asset.decoders")

Decode = Callable[[Path, DecodeLimits, int, bool], Inspection]
THUMBNAIL_SIDE = 320
# A worker is replaced after this many files, so whatever its heap fragmented into goes too.
FILES_PER_WORKER = 200
HEADER = struct.Struct(">I")
WORKER_MODULE = "pixsim_asset.decode_worker"


@dataclass(frozen=True, slots=True)
class Request:
    path: str
    limits: DecodeLimits
    thumbnail_side: int = THUMBNAIL_SIDE


class WorkerDied(Exception):
    pass


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.files = 0

    async def ask(self, request: Request) -> object:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        body = pickle.dumps(request)
        try:
            stdin.write(HEADER.pack(len(body)) + body)
            await stdin.drain()
            (size,) = HEADER.unpack(await stdout.readexactly(HEADER.size))
            answer = await stdout.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            raise WorkerDied(f"exited with {await self.process.wait()}") from error
        self.files += 1
        return pickle.loads(answer)  # noqa: S301 (our own worker's answer)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # the worker's cue to exit
        try:
            await asyncio.wait_for(self.process.wait(), timeout=2)
        except TimeoutError:
            self.kill()


class DecodePool:
    def __init__(
        self,
        workers: int,
        *,
        address_space_bytes: int,
        seconds_per_file: float = 120.0,
        command: Sequence[str] = (sys.executable, "-m", WORKER_MODULE),
    ) -> None:
        self._command = [*command, str(address_space_bytes)]
        self._seconds_per_file = seconds_per_file
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()

    async def inspect(self, path: Path, limits: DecodeLimits) -> Inspection:
        """What the file is, with its thumbnail and (for a video) first and last frames."""
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._start()
            try:
                answer = await asyncio.wait_for(
                    worker.ask(Request(str(path), limits)), timeout=self._seconds_per_file
                )
            except TimeoutError as error:
                # A file that keeps a decoder busy this long would hold its partition for good.
                self._all.discard(worker)
                worker.kill()
                log.warning("a file outlasted its decoder's deadline; refused", file=path.name)
                raise ProbeFailed(
                    f"decoding took longer than {self._seconds_per_file:g} s"
                ) from error
            except WorkerDied as error:
                self._all.discard(worker)
                log.warning("a file crashed its decoder; refused", file=path.name, error=str(error))
                raise ProbeFailed("the decoder crashed on this file") from error
            except BaseException:
                # Cancelled mid-file: the worker's answer would be read by the next caller.
                self._all.discard(worker)
                worker.kill()
                raise
            if worker.files >= FILES_PER_WORKER:
                self._all.discard(worker)
                await worker.stop()
            else:
                self._idle.append(worker)
        if isinstance(answer, ProbeFailed):
            raise answer
        assert isinstance(answer, Inspection)
        return answer

    async def _start(self) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            *self._command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        worker = _Worker(process)
        self._all.add(worker)
        return worker

    async def close(self) -> None:
        workers, self._all, self._idle = list(self._all), set(), []
        await asyncio.gather(*(worker.stop() for worker in workers))
