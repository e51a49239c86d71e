"""One writer per object store, across machines: a lease object created with a conditional put.

The holder renews the lease while it works; a crashed holder's lease expires after `lease_seconds()` (or is
taken over at once on the machine it ran on, when its process is gone). A second writer is refused with one
line naming the holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from featstore.errors import FeatstoreError
from featstore.store.location import StoreLocation, StoreUnreachable

LEASE = ".write.lease"
_HELD: set[str] = set()  # tokens of the leases this process holds now
LEASE_VARIABLE = "FEATSTORE_LEASE_SECONDS"
DEFAULT_LEASE_S = 60.0


def lease_seconds() -> float:
    """How long a lease lasts without renewal ($FEATSTORE_LEASE_SECONDS, default 60)."""
    return float(os.environ.get(LEASE_VARIABLE, DEFAULT_LEASE_S))


@contextmanager
def holding_lease(location: StoreLocation, command: str) -> Iterator[None]:
    """Hold the store's write lease for the duration, renewing it in a background thread."""
    token = uuid.uuid4().hex
    ttl = lease_seconds()
    if not location.create_bytes(LEASE, _lease(token, command, ttl)):
        holder = _read(location)
        if holder is not None and not _lapsed(holder):
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("since", 0)))
            raise FeatstoreError(
                f"{holder.get('command', 'another featstore command')} on {holder.get('host')} (pid "
                f"{holder.get('pid')}) has been writing {location.url} since {since}; wait for it to finish "
                f"(a lease left by a crashed writer expires {ttl:.0f} s after its last renewal)")
        location.delete([LEASE])
        if not location.create_bytes(LEASE, _lease(token, command, ttl)):
            raise FeatstoreError(f"another featstore command took the write lease of {location.url} just now; "
                                 "run this command again when it finishes")
    _HELD.add(token)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(location, token, command, ttl, stop), daemon=True,
                               name="lease-renewal")
    renewer.start()
    try:
        yield
    finally:
        _HELD.discard(token)
        stop.set()
        renewer.join()
        with contextlib.suppress(StoreUnreachable):  # an unreachable store: the lease expires by itself
            held = _read(location)
            if held is not None and held.get("token") == token:
                location.delete([LEASE])


def _lease(token: str, command: str, ttl: float) -> bytes:
    now = time.time()
    return json.dumps({"token": token, "command": command, "host": socket.gethostname(), "pid": os.getpid(),
                       "since": now, "expires": now + ttl}).encode()


def _renew(location: StoreLocation, token: str, command: str, ttl: float, stop: threading.Event) -> None:
    since = time.time()
    while not stop.wait(ttl / 3):
        renewed = json.loads(_lease(token, command, ttl))
        try:
            location.write_bytes(LEASE, json.dumps({**renewed, "since": since}).encode())
        except Exception:  # an unreachable store: the command itself reports it; keep trying meanwhile
            continue


def _read(location: StoreLocation) -> dict | None:
    raw = location.read_bytes(LEASE)
    try:
        return json.loads(raw) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _lapsed(holder: dict) -> bool:
    """Whether a lease no longer holds: expired, unreadable, held by a process of this host that is gone, or
    left by this process (which holds leases only within a command)."""
    if not holder or time.time() > float(holder.get("expires", 0)):
        return True
    if holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid():
        return holder.get("token") not in _HELD
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False
