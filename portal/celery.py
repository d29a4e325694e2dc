"""The Celery application: `celery -A portal worker` and `celery -A portal beat`."""

from __future__ import annotations

import os
from queue import Empty
from time import monotonic, sleep

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES, filesystem

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class FileTransport(filesystem.Transport):  # type: ignore[misc]
    """kombu's file-system transport (the default run's broker), without its full sleep at the prefetch limit.

    A virtual channel answers "no message" both when its folder is empty and when the worker already holds
    its prefetch (with acks late and a prefetch multiplier of 1: one message per pool process), and kombu
    sleeps ``polling_interval`` either way (1 s by default). A worker of 2 processes therefore took at most
    2 messages a second however many waited, and replication fell minutes behind 20 uploads a second. At
    the limit the wait is for this worker's own acks, which come as soon as a task ends: the folder is
    read again as soon as one comes. Waiting for it is an in-memory check every ``ack_wait``; the folder
    (a listing of every message file) is still read only once per ``polling_interval`` meanwhile.
    """

    ack_wait = 0.01

    def _at_prefetch_limit(self) -> bool:
        return any(channel._consumers and not channel.qos.can_consume() for channel in self.channels)

    def _pause(self, seconds: float) -> None:
        if not self._at_prefetch_limit():
            sleep(seconds)
            return
        end = monotonic() + seconds
        while self._at_prefetch_limit():
            left = end - monotonic()
            if left <= 0:
                return
            sleep(min(self.ack_wait, left))

    def drain_events(self, connection: object, timeout: float | None = None) -> None:
        started = monotonic()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                elapsed = monotonic() - started
                if timeout is not None and elapsed >= timeout:
                    raise TimeoutError() from None
                pause = self.polling_interval or 0.0
                if timeout is not None:
                    pause = min(pause, timeout - elapsed)
                self._pause(pause)


# Chosen by the URL, not by ``broker_transport``: that setting would apply to every URL this app connects
# to, so a broker named at run time (the readiness check reads it from settings) would get this class too.
TRANSPORT_ALIASES["filesystem"] = f"{__name__}:FileTransport"
