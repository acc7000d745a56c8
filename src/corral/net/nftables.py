"""nftables transactions from inside the server, through libnftables (the library ``nft`` itself is).

An ``nft -f`` per change meant a process start and, in it, a fetch of the
whole ruleset: 9 ms on a quiet host, 40-60 ms while a sandbox is being made
beside it (two cores, ``ip``, ``mount`` and ``cp`` starting at the same
time), all of it CPU taken from that sandbox's start. The same transaction
through the library, in this process, takes 1-5 ms.

A script is applied as ``nft -f`` applies it: all of it or nothing. Each runs
in a worker thread (ctypes lets go of the GIL) with a context of its own, one
at a time. A caller cancelled while its transaction runs waits for it to end
before it sees the cancellation: whoever cancelled may be about to undo the
change, which must then come after it.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from dataclasses import dataclass

from corral.errors import RuntimeFailure

LIBRARY = "libnftables.so.1"


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    error: str
    """What nft said went wrong (its messages, as ``nft -f`` prints them)."""


class _Library:
    """The few libnftables calls used here, bound once."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(LIBRARY)
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot load {LIBRARY} ({exc}); install the nftables package (apt install nftables)"
            ) from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self.lib = lib
        self.lock = threading.Lock()

    def apply(self, script: str) -> Outcome:
        lib = self.lib
        with self.lock:
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                return Outcome(False, "libnftables could not make a context")
            try:
                lib.nft_ctx_buffer_output(ctx)  # what a listing would print is not wanted here
                lib.nft_ctx_buffer_error(ctx)
                code = lib.nft_run_cmd_from_buffer(ctx, script.encode())
                error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            finally:
                lib.nft_ctx_free(ctx)
        return Outcome(code == 0, error.strip())


_library: _Library | None = None


async def apply(script: str, *, check: bool = True) -> Outcome:
    """Apply ``script`` (``nft -f`` syntax) as one transaction; with ``check``, a failure raises RuntimeFailure."""
    global _library
    if _library is None:
        _library = _Library()
    work = asyncio.get_running_loop().run_in_executor(None, _library.apply, script)
    try:
        outcome = await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise
    if check and not outcome.ok:
        lines = outcome.error.splitlines()
        raise RuntimeFailure(
            f"nft refused a change: {lines[0] if lines else 'no reason given'}",
            details={"error": outcome.error[-2000:], "script": script[-2000:]},
        )
    return outcome
