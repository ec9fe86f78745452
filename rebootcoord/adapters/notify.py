"""Notifications through apprise: the only module that imports it (an import-linter contract).

Why apprise: one well-kept library (pure Python, BSD licensed, released steadily since 2017)
speaks Slack, Microsoft Teams, Matrix, email, Discord, Telegram, ntfy, generic JSON, form and
XML webhooks and a hundred more services behind one URL syntax, so an operator configures a
service with a URL and rebootcoord carries no client per chat system (kured's ``--notify-url``
relies on shoutrrr, the Go library of the same idea, and its URLs look alike).

Owns: per URL, a bounded queue and a background thread that sends it each notice (a service that
hangs delays no other), each request bounded by ``timeout``; the outcome of each (sent, failed,
dropped) handed to ``on_outcome`` for the metric; a failure logged with the URL named by its
place (``notify_urls[0]``) and apprise's service name. Never: waits for a receiver in the
caller's thread, raises into it, or logs a URL or any part of one -- apprise's own log lines (and
urllib3's) have the URLs' parts masked; imports an apprise plugin no configured URL needs (see
``instantiate``).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote

from rebootcoord.core.config import MASK
from rebootcoord.core.notices import Notice
from rebootcoord.errors import ConfigError, Problem, masked_url

log = logging.getLogger(__name__)

#: Notices waiting to be sent to one URL; more are dropped (and counted): a receiver that hangs
#: costs memory for this many, never a blocked cycle. A cycle makes three to five.
QUEUE_SIZE = 64
SENT, FAILED, DROPPED = "sent", "failed", "dropped"
OUTCOMES = (SENT, FAILED, DROPPED)
#: The loggers whose lines may quote what a service was sent to (apprise's connection errors,
#: urllib3's retries). Every apprise plugin logs through "apprise".
_QUOTING_LOGGERS = ("apprise", "urllib3.connectionpool", "urllib3.util.retry")


def _ignore(_event: str, _outcome: str) -> None:
    return None


class AppriseNotifier:
    """The Notifier port over apprise: one sender (queue and thread) per URL, so that a service
    that hangs delays no other. Raises ConfigError, naming every URL apprise cannot use by its
    place in notify_urls, when it is built: a bad URL fails the start, not a cycle."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float,
        on_outcome: Callable[[str, str], None] = _ignore,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        import apprise

        self._mask = _SecretMask(urls)
        for name in _QUOTING_LOGGERS:
            logging.getLogger(name).addFilter(self._mask)
        asset = apprise.AppriseAsset(app_id="rebootcoord", app_desc="rebootcoord reboot coordinator")
        services: list[tuple[str, Any]] = []
        problems: list[Problem] = []
        for i, url in enumerate(urls):
            service = instantiate(url, asset)
            if service is None:
                problems.append(
                    Problem(
                        f"notify_urls[{i}]",
                        masked_url(url),
                        "a URL of a service apprise knows, with the parts that service needs "
                        "(apprise's documentation lists each service's URL)",
                    )
                )
                continue
            _bound(service, url, timeout)
            one = apprise.Apprise(asset=asset)
            one.add(service)
            services.append((f"notify_urls[{i}] ({service.service_name})", one))
        if problems:
            self._unfilter()
            raise ConfigError(problems)
        count = _Counter(on_outcome)
        send = _Send(apprise.NotifyType, self._mask)
        self._senders = tuple(_Sender(name, one, send, count, queue_size) for name, one in services)

    def notify(self, notice: Notice) -> None:
        for sender in self._senders:
            sender.offer(notice)

    def close(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for sender in self._senders:
            sender.stop()
        done = [sender.finish(end) for sender in self._senders]
        if all(done):
            self._unfilter()  # else a request still running may log: its lines stay masked

    def _unfilter(self) -> None:
        for name in _QUOTING_LOGGERS:
            logging.getLogger(name).removeFilter(self._mask)


class _Counter:
    """``on_outcome``, which must never end a sending thread."""

    def __init__(self, on_outcome: Callable[[str, str], None]) -> None:
        self._on_outcome = on_outcome

    def __call__(self, event: str, outcome: str) -> None:
        try:
            self._on_outcome(event, outcome)
        except Exception:
            log.exception("counting a notification failed")


class _Send:
    """One notice to one apprise service: True when it took it."""

    def __init__(self, notify_type: Any, mask: _SecretMask) -> None:
        self._notify_type = notify_type
        self._mask = mask

    def __call__(self, name: str, service: Any, notice: Notice) -> bool:
        why = "the line of apprise before this one says why"
        try:
            ok = bool(
                service.notify(
                    body=notice.body,
                    title=notice.title,
                    notify_type=self._notify_type(notice.severity.value),
                )
            )
        except Exception as exc:  # noqa: BLE001 -- a plugin's bug must not end the sending thread
            ok, why = False, self._mask.hide(f"{type(exc).__name__}: {exc}")
        if not ok:
            log.warning("notification %s to %s failed (%s)", notice.event, name, why)
        return ok


class _Sender:
    """One URL's bounded queue and the thread that empties it."""

    def __init__(self, name: str, service: Any, send: _Send, count: _Counter, size: int) -> None:
        self.name = name
        self._service = service
        self._send = send
        self._count = count
        self._size = size
        self._cond = threading.Condition()
        self._pending: deque[Notice] = deque()
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"rebootcoord-notify-{name}", daemon=True)
        self._thread.start()

    def offer(self, notice: Notice) -> None:
        with self._cond:
            accepted = not self._closed and len(self._pending) < self._size
            if accepted:
                self._pending.append(notice)
                self._cond.notify_all()
        if not accepted:
            log.warning(
                "notification %s to %s dropped: %s",
                notice.event,
                self.name,
                "the agent is stopping"
                if self._closed
                else f"{self._size} wait to be sent (it is slow or down)",
            )
            self._count(notice.event, DROPPED)

    def stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def finish(self, end: float) -> bool:
        """Wait until what was queued is sent, or ``end``; drop (and count) what is left. True
        when the thread is done."""
        with self._cond:
            while self._pending or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            unsent = list(self._pending)
            self._pending.clear()
        for notice in unsent:
            self._count(notice.event, DROPPED)
        if unsent:
            log.warning("%d notification(s) to %s not sent: the agent is stopping", len(unsent), self.name)
        self._thread.join(max(0.0, end - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                notice = self._pending.popleft()
                self._busy = True
            try:
                ok = self._send(self.name, self._service, notice)
                self._count(notice.event, SENT if ok else FAILED)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def instantiate(url: str, asset: Any) -> Any:
    """``apprise.Apprise.instantiate(url, asset=asset)``, importing only the plugin that serves the
    URL's scheme: the service, or None when apprise could not use the URL.

    apprise's own ``instantiate`` imports every one of its ~190 plugin modules on its first look-up,
    and with them their libraries (cryptography, oauthlib, paho, ...): about 25 MiB an agent would
    carry for its whole life to send to one or two services. Here the plugin declaring the scheme
    is found by reading the plugins' sources (``protocol = ...``), imported alone, checked to
    declare the scheme, and used as apprise's ``instantiate`` uses it. A scheme that no plugin
    declares -- a service's own https:// URL (apprise's "native" URLs), or a mistake -- goes to
    apprise's ``instantiate``, which loads them all: apprise's answer, at apprise's cost."""
    import apprise

    try:
        from apprise.utils.parse import GET_SCHEMA_RE

        found = GET_SCHEMA_RE.match(url)
        plugin = _plugin(found.group("schema").lower()) if found else None
    except (ImportError, AttributeError, OSError) as exc:  # an apprise laid out otherwise
        log.debug("apprise plugin look-up: %s; apprise's own", exc)
        plugin = None
    if plugin is None:
        return apprise.Apprise.instantiate(url, asset=asset)
    # What apprise's instantiate does once it knows the plugin (apprise 1.9 to 2.3).
    results = plugin.parse_url(url.replace("/#", "/%23"))
    if not results or not plugin.enabled:
        return None
    results["tag"] = set()
    results["asset"] = asset
    try:
        service = plugin(**results)
    except Exception:  # noqa: BLE001 -- apprise's instantiate answers None for any of them too
        return None
    return service if service.enabled else None


# A plugin's class attribute naming schemes: protocol = "json", secure_protocol = ("a", "b"),
# kodi_protocol = "kodi". A candidate only: the class imported must declare the scheme.
_PROTOCOL = re.compile(r"^\s+\w*protocol\s*=\s*(\([^)]*\)|\"[^\"]*\"|'[^']*')", re.MULTILINE)
_QUOTED = re.compile(r"[\"']([^\"']+)[\"']")
# The plugin modules apprise itself loads (manager.py): not base, not private.
_MODULE = re.compile(r"^(?!base|_)[a-z0-9_]+$", re.IGNORECASE)


def _plugin(scheme: str) -> Any:
    """The apprise plugin class declaring ``scheme``, having imported its module and no other
    plugin's; None when no plugin's source declares it."""
    import apprise.plugins
    from apprise.manager_plugins import NotificationManager

    for name in _modules_declaring(scheme, apprise.plugins.__path__):
        module = importlib.import_module(f"apprise.plugins.{name}")
        for attr in sorted(vars(module)):
            plugin = getattr(module, attr)
            if (
                NotificationManager.module_filter_re.match(attr)
                and hasattr(plugin, "app_id")
                and scheme in {s.lower() for s in plugin.schemas(plugin)}
            ):
                return plugin
    return None


def _modules_declaring(scheme: str, roots: Iterable[str]) -> list[str]:
    """The names of the plugin modules (a file, or a package's directory) under ``roots`` whose
    source assigns ``scheme`` to a ``protocol`` or ``secure_protocol``."""
    names = []
    for root in roots:
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            name = entry.removesuffix(".py")
            if not _MODULE.match(name):
                continue
            if os.path.isdir(path):
                files = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".py")]
            elif entry.endswith(".py"):
                files = [path]
            else:
                continue
            if any(scheme in _schemes_in(f) for f in files):
                names.append(name)
    return names


def _schemes_in(path: str) -> set[str]:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return {s.lower() for m in _PROTOCOL.finditer(text) for s in _QUOTED.findall(m.group(1))}


def _bound(service: Any, url: str, timeout: float) -> None:
    """Each request of the service gives up after ``timeout`` (connect, then read), unless the
    URL sets apprise's own ``cto``/``rto``."""
    query = dict(parse_qsl(url.partition("?")[2]))
    if "cto" not in query:
        service.socket_connect_timeout = timeout
    if "rto" not in query:
        service.socket_read_timeout = timeout


# Where an apprise URL's parts end: any of its parts may be a token ("slack://TokenA/TokenB/TokenC",
# "tgram://bot_token/chat_id"), its host included.
_SEPARATORS = re.compile(r"[/:@?&=#,;\s]+")
#: Parts shorter than this are not masked: they would mask common words, and hold no secret.
_MIN_SECRET = 4
_PORT = re.compile(r"^[0-9]{1,5}$")  # a port is no secret, and masking it would hide every port


def secret_parts(url: str) -> set[str]:
    """Every part of an apprise URL but its scheme and its query's names, as written and
    percent-decoded: user, password, host, each path segment, each query value."""
    rest = url.partition("://")[2] or url
    base, _, query = rest.partition("?")
    pieces = _SEPARATORS.split(base)
    for _name, value in parse_qsl(query, keep_blank_values=True):
        pieces += _SEPARATORS.split(value)
    return {
        form
        for piece in pieces
        for form in (piece, unquote(piece))
        if len(form) >= _MIN_SECRET and not _PORT.match(form)
    }


class _SecretMask(logging.Filter):
    """A log filter that masks every part of the URLs it was given in a record's message."""

    def __init__(self, urls: Iterable[str]) -> None:
        super().__init__()
        parts = sorted({p for url in urls for p in secret_parts(url)}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, parts))) if parts else None

    def hide(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        message = record.getMessage()
        changed = False
        if record.exc_info:
            # A traceback may quote a URL: its text joins the message, masked like it.
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text, changed = None, None, True
        masked = self.hide(message)
        if changed or masked != message:
            record.msg, record.args = masked, None
        return True
