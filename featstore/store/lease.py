"""One writer per object store, across machines: a lease object taken and renewed with conditional puts.

Taking a free store creates the lease only if there is none (`If-None-Match: *`); taking over a lapsed lease
and every renewal replace it only if it is still the version read (`If-Match` on its ETag), so two writers can
never both proceed. A crashed holder's lease expires after `lease_seconds()` without renewal (or is taken over
at once on the machine it ran on, when its process is gone). A holder whose renewal fails past expiry, or
finds the lease taken, has lost it: `assert_held` then stops it before it changes the catalog in the store.
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
LEASE_VARIABLE = "FEATSTORE_LEASE_SECONDS"
DEFAULT_LEASE_S = 60.0


def lease_seconds() -> float:
    """How long a lease lasts without renewal ($FEATSTORE_LEASE_SECONDS, default 60)."""
    return float(os.environ.get(LEASE_VARIABLE, DEFAULT_LEASE_S))


class Lease:
    """This process's hold on a store: its token, the ETag of the version it last wrote, and whether it lost it."""

    def __init__(self, location: StoreLocation, command: str):
        self.location, self.command = location, command
        self.token, self.ttl = uuid.uuid4().hex, lease_seconds()
        self.since = time.time()
        self.expires = 0.0
        self.tag = ""
        self.lost: str | None = None

    def body(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "command": self.command,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": self.since,
                "expires": time.time() + self.ttl,
            }
        ).encode()

    def acquire(self) -> None:
        """Take the lease, or refuse with one line naming its holder."""
        body = self.body()
        if not self.location.create_bytes(LEASE, body):
            found = self.location.read_tagged(LEASE)
            if found is not None:
                holder = _parse(found[0])
                if not _lapsed(holder):
                    raise FeatstoreError(_held_by(holder, self.location, self.ttl))
                if not self.location.replace_bytes(LEASE, body, found[1]):
                    raise FeatstoreError(
                        f"another featstore command took the write lease of {self.location.url} "
                        "just now; run this command again when it finishes"
                    )
            elif not self.location.create_bytes(LEASE, body):
                raise FeatstoreError(
                    f"another featstore command took the write lease of {self.location.url} just "
                    "now; run this command again when it finishes"
                )
        self._written(body)

    def renew(self) -> None:
        """Extend the lease if it is still ours; mark it lost when it is not, or when renewals failed too long."""
        body = self.body()
        try:
            if self.location.replace_bytes(LEASE, body, self.tag):
                self._written(body)
            else:
                self.lost = "another command took over its lease"
        except Exception:  # unreachable, throttled: try again at the next renewal while time is left
            if time.time() > self.expires:
                self.lost = "its lease expired while the store was unreachable"

    def _written(self, body: bytes) -> None:
        found = self.location.read_tagged(LEASE)
        if found is None or _parse(found[0]).get("token") != self.token:
            self.lost = "another command took over its lease"
            return
        self.tag, self.expires = found[1], json.loads(body)["expires"]

    def release(self) -> None:
        """Delete the lease if it is still ours (an unreachable store: it expires by itself)."""
        with contextlib.suppress(StoreUnreachable):
            found = self.location.read_tagged(LEASE)
            if self.lost is None and found is not None and _parse(found[0]).get("token") == self.token:
                self.location.delete([LEASE])

    def check(self) -> None:
        if self.lost is not None:
            raise FeatstoreError(
                f"this command stopped writing {self.location.url}: {self.lost}; nothing more was "
                "published; run it again"
            )


_ACTIVE: dict[str, Lease] = {}  # the lease this process holds, by store URL


@contextmanager
def holding_lease(location: StoreLocation, command: str) -> Iterator[Lease]:
    """Hold the store's write lease for the duration, renewing it in a background thread."""
    lease = Lease(location, command)
    lease.acquire()
    _ACTIVE[location.url] = lease
    stop = threading.Event()
    renewer = threading.Thread(target=_renew_until, args=(lease, stop), daemon=True, name="lease-renewal")
    renewer.start()
    try:
        yield lease
    finally:
        _ACTIVE.pop(location.url, None)
        stop.set()
        renewer.join()
        lease.release()


def assert_held(location: StoreLocation) -> None:
    """Stop with one line when this process held the store's lease and lost it (a no-op without a lease)."""
    lease = _ACTIVE.get(location.url)
    if lease is not None:
        lease.check()


def _renew_until(lease: Lease, stop: threading.Event) -> None:
    while not stop.wait(lease.ttl / 3) and lease.lost is None:
        lease.renew()


def _parse(raw: bytes) -> dict:
    try:
        parsed = json.loads(raw)
        return parsed if isinstance(parsed, dict) else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _held_by(holder: dict, location: StoreLocation, ttl: float) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("since", 0))))
    return (
        f"{holder.get('command', 'another featstore command')} on {holder.get('host')} (pid {holder.get('pid')}) "
        f"has been writing {location.url} since {since}; wait for it to finish (a lease left by a crashed "
        f"writer expires {ttl:.0f} s after its last renewal)"
    )


def _lapsed(holder: dict) -> bool:
    """Whether a lease no longer holds: expired, unreadable, held by a process of this host that is gone, or
    left by this process when it holds no lease of that token."""
    if not holder or time.time() > float(holder.get("expires", 0)):
        return True
    if holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid():
        return all(lease.token != holder.get("token") for lease in _ACTIVE.values())
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False
