"""One decoder process (`python -m pixsim_asset.decode_worker <address-space-bytes>`): reads
requests from stdin, decodes each file, answers on stdout, one at a time, until stdin ends
(its service has gone). Messages are a 4-byte length and a pickle, between this process and
the service that started it (see decoders.py); anything a library prints goes to stderr.
"""

from __future__ import annotations

import os
import pickle
import resource
import struct
import sys
from pathlib import Path
from typing import IO, Any

from pixsim_asset.decoders import Decode, Request
from pixsim_asset.probe import ProbeFailed, inspect

HEADER = struct.Struct(">I")


def read_message(stream: IO[bytes]) -> Any | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    return pickle.loads(stream.read(size))  # noqa: S301 (from the service that started us)


def write_message(stream: IO[bytes], message: object) -> None:
    body = pickle.dumps(message)
    stream.write(HEADER.pack(len(body)) + body)
    stream.flush()


def serve(decode: Decode = inspect) -> None:
    address_space = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if address_space > 0:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    # The protocol keeps the real stdout; a stray print lands on stderr instead.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    while (request := read_message(requests)) is not None:
        assert isinstance(request, Request)
        try:
            answer: object = decode(
                Path(request.path), request.limits, request.thumbnail_side, True
            )
        except ProbeFailed as error:
            answer = error
        except MemoryError:
            answer = ProbeFailed("decoding it needs more memory than a decoder may have")
        write_message(answers, answer)


if __name__ == "__main__":
    serve()
