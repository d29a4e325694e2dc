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
    sleeps ``polling_interval`` (1 s) either way. A worker of 2 processes therefore took at most 2
    messages a second however many waited, and replication fell minutes behind 20 uploads a second. At
    the limit the wait is for this worker's own acks, which come as soon as a task ends: look again soon.
    An empty folder is still polled every ``polling_interval`` (settings), not every ``ack_wait``.
    """

    ack_wait = 0.02

    def _at_prefetch_limit(self) -> bool:
        return any(channel._consumers and not channel.qos.can_consume() for channel in self.channels)

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
                pause = self.ack_wait if self._at_prefetch_limit() else self.polling_interval
                if timeout is not None:
                    pause = min(pause, timeout - elapsed)
                sleep(pause)


# Chosen by the URL, not by ``broker_transport``: that setting would apply to every URL this app connects
# to, so a broker named at run time (the readiness check reads it from settings) would get this class too.
TRANSPORT_ALIASES["filesystem"] = f"{__name__}:FileTransport"
