"""The Celery application: `celery -A portal worker` and `celery -A portal beat`."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from queue import Empty
from time import monotonic, sleep

from celery import Celery
from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.json import dumps, loads

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

logger = logging.getLogger(__name__)

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class FileChannel(filesystem.Channel):  # type: ignore[misc]
    """kombu's file-system channel, with messages that appear whole or not at all.

    kombu creates the message file under its final name and only then writes it; the worker, which takes
    every file with that name, could take it in between: it read an empty message, and an exception in
    the consumer stopped the whole worker (``make run``'s honcho then stops every process), while the
    message, written into the file already taken, was lost. Seen under a full-speed STOW-RS ingest
    (bench/bench_replication.py). Here a message is written under a temporary name kombu's reader does
    not match (``.`` first) and renamed into place, which is atomic. A file that still does not decode
    (written by an older version, a damaged disk) is set aside (``.taken-<name>.unreadable``) and logged, not
    fatal: what it held is found again by the sweeps (replication, intake).
    """

    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        temporary = os.path.join(self.data_folder_out, f".{name}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(dumps(payload).encode())
            os.replace(temporary, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise ChannelError(f"Cannot add message {name!r} to the queue folder") from exc

    def _get(self, queue: str) -> dict:
        suffix = f".{queue}.msg"
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.startswith(".") or filename.partition(".")[2] != suffix[1:]:
                continue
            # Renamed to a name no reader matches, in the same folder (atomic): of several consumers of one
            # folder, one gets the message.
            taken = os.path.join(self.data_folder_in, f".taken-{filename}")
            try:
                os.rename(os.path.join(self.data_folder_in, filename), taken)
            except OSError:
                continue  # another consumer took it
            try:
                with open(taken, "rb") as handle:
                    payload = handle.read()
            except OSError as exc:
                raise ChannelError(f"Cannot read message {filename!r} from the queue folder") from exc
            try:
                message = loads(payload.decode())
            except ValueError:
                os.replace(taken, f"{taken}.unreadable")
                logger.error("Queue message %s does not decode; set aside as %s.unreadable", filename, taken)
                continue
            if self.store_processed:
                os.replace(taken, os.path.join(self.processed_folder, filename))
            else:
                os.unlink(taken)
            return message
        raise Empty()


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

    Channel = FileChannel
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
