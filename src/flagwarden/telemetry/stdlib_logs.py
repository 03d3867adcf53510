"""The standard library's ``logging`` (the vendor SDKs' loggers) in flagwarden's own format.

When flagwarden configures structlog (:func:`flagwarden.telemetry.logging.configure_logging`)
and the application has put no handler on the root logger, :func:`install` puts one there:
every record (``ldclient``, ``splitio``, ``urllib3``, ``openfeature``...) is rendered by
structlog's ``ProcessorFormatter`` with the same renderer as flagwarden's events (JSON lines,
or the console on a terminal), its level as ``level``, its logger's name as ``logger``, its
message as ``event``, the same ISO UTC ``timestamp``, and a traceback as the ``exception``
field (one JSON string, not lines of its own), on the same stream, under structlog's lock.

Every string of a record is scrubbed first: the secrets the runtime registered
(:func:`register_secrets`: the profiles' SDK keys, whether or not they look like keys, and the
credentials of the configured URLs), then ``Authorization``-like headers, URLs' credentials
and ``password=``-like parameters (:func:`flagwarden.storage.redact_text`), then any word that
looks like a credential (:func:`flagwarden.config.looks_secret`: ``sdk-...``, a long token of
letters and digits; a request id can be masked with them).

Levels: the handler and the root logger take ``FLAGWARDEN_LOG_LEVEL``; a logger with a level
of its own keeps it; below WARNING, the chatty loggers of :data:`QUIET_LOGGERS` that have no
level of their own are set to WARNING (``logging.getLogger("urllib3").setLevel(...)`` before
``configure()`` keeps yours).

Python's warnings (``warnings.showwarning``, as ``py.warnings`` records), a thread's uncaught
exception (``threading.excepthook``, as ``threading`` records) and the one that ends the
program (``sys.excepthook``, as an ``uncaught`` record), when their hooks are Python's own,
go the same way, straight to the bridge while it is the root logger's (Python's own
behaviour again once an application's later set-up replaced it).

An application that configured logging itself (a handler on the root logger or on a named
logger that propagates to it, or structlog) keeps it: nothing is added or changed. Configure
it before ``flagwarden.configure()``; after, ``logging.basicConfig(force=True)`` or
``logging.config.dictConfig`` replace the handler (``basicConfig`` without ``force`` does
nothing once the root logger has a handler, and a structlog configuration made later leaves
the handler in place).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import warnings
from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote, quote_plus

import structlog
from pydantic import BaseModel, SecretStr

from flagwarden.errors import ConfigError
from flagwarden.storage import redact_text
from flagwarden.validation import SECRET_FIELDS, looks_secret

if TYPE_CHECKING:
    from flagwarden.config import Settings

__all__ = [
    "QUIET_LOGGERS",
    "install",
    "register_credential",
    "register_secret",
    "register_secrets",
    "register_url",
    "scrub",
]

# Loggers that say something at INFO or DEBUG for every request or call: WARNING by default.
QUIET_LOGGERS = (
    "urllib3",
    "requests",
    "charset_normalizer",
    "chardet",
    "hpack",
    "httpcore",
    "httpx",
    "grpc",
    "py4j",
    "botocore",
    "boto3",
    "s3transfer",
    "fsspec",
    "filelock",
    "asyncio",
)

_MASK = "***"
_SHORTEST = 4  # a registered value shorter than this would mask ordinary words
_HEADER_NAMES = r"(?:proxy-)?authorization|x-api-key|api-key|apikey|x-auth-token|cookie|set-cookie"
_HEADER_NAME = re.compile(f"(?i)(?:{_HEADER_NAMES})")
_HEADER = re.compile(
    rf"(?i)\b({_HEADER_NAMES})"
    r"(['\"]?\s*[:=]\s*)"  # Authorization: ..., 'Authorization': '...', authorization=...
    r"(?:(['\"])((?:bearer|basic|digest|token)\s+)?[^'\"]*"  # quoted: up to the quote
    r"|((?:bearer|basic|digest|token)\s+)?[^\s'\",;]+)"  # bare: one word after the scheme
)
# Words a credential could be (what looks_secret judges): letters, digits and - _ + . and
# base64's padding; "key=sdk-..." is two words.
_WORD = re.compile(r"[A-Za-z0-9_\-+.]+=*")
_PLAIN = frozenset({"level", "logger", "timestamp"})

_lock = threading.Lock()
_values: tuple[str, ...] = ()  # registered secrets, longest first (replaced whole: no lock to read)
_urls: tuple[str, ...] = ()  # registered URLs: their credentials are masked wherever they appear


def register_secret(value: str | SecretStr | None) -> None:
    """Mask ``value`` (an SDK key, a password) in every record from now on, as written and
    URL-quoted. Values under 4 characters are ignored (they would mask ordinary words)."""
    global _values
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not value or len(value.strip()) < _SHORTEST:
        return
    forms = {value, value.strip(), quote(value, safe=""), quote_plus(value)}
    with _lock:
        _values = tuple(sorted(set(_values) | forms, key=len, reverse=True))


def register_credential(value: str) -> None:
    """Mask a credential as :func:`register_secret` does, and, when it is written with its
    scheme (``Bearer abc``), the credential alone too."""
    register_secret(value)
    scheme, _, credential = value.partition(" ")
    if credential and scheme.isalpha():
        register_secret(credential)


def register_url(url: str) -> None:
    """Mask the credentials of ``url`` (a user's password, ``?password=``) wherever they
    appear in a record, alone, quoted or decoded (as :func:`~flagwarden.storage.redact_text`)."""
    global _urls
    with _lock:
        if url not in _urls:
            _urls = (*_urls, url)


def register_secrets(settings: Settings, profile: Any) -> None:
    """Register the secrets of a configuration (:func:`flagwarden.configure` calls this): of
    the configuration, its profile and its shadow's profile, each ``SecretStr`` (an SDK key),
    the credentials of every URL, and any value under a secret's name (``api_key: ...`` in a
    profile's ``options``), in nested models, mappings and lists too."""
    models = [settings.config, profile]
    if settings.config.shadow is not None:
        with contextlib.suppress(ConfigError):  # a bad one: building the chain says so
            models.append(settings.load_profile(settings.config.shadow.provider))
    for model in models:
        _walk(model, secret=False)


def _walk(value: Any, *, secret: bool) -> None:
    if isinstance(value, SecretStr):
        register_secret(value)
    elif isinstance(value, str):
        if "://" in value:
            register_url(value)
        if secret:
            register_credential(value)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _walk(getattr(value, name, None), secret=_secret_name(name))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _walk(item, secret=isinstance(key, str) and _secret_name(key))
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _walk(item, secret=secret)


def _secret_name(name: str) -> bool:
    """A field or key whose value is a secret: config's rule (``sdk_key``, ``token``...), and
    the credential headers."""
    return bool(SECRET_FIELDS.search(name) or _HEADER_NAME.fullmatch(name))


def scrub(text: str) -> str:
    """``text`` (a vendor's log message or traceback) without the registered secrets, header
    credentials, URLs' credentials, ``password=``-like parameters, or credential-like words."""
    for secret in _values:
        if secret in text:
            text = text.replace(secret, _MASK)
    text = _HEADER.sub(_mask_header, text)
    text = redact_text(text, *_urls)
    return _WORD.sub(_mask_word, text)


def _mask_header(match: re.Match[str]) -> str:
    name, separator, quote_char, quoted_scheme, bare_scheme = match.groups()
    if quote_char is not None:
        return f"{name}{separator}{quote_char}{quoted_scheme or ''}{_MASK}"
    return f"{name}{separator}{bare_scheme or ''}{_MASK}"


def _mask_word(match: re.Match[str]) -> str:
    return _MASK if looks_secret(match.group()) else match.group()


def _scrub_event(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str) and key not in _PLAIN:
            event_dict[key] = scrub(value)
    return event_dict


class _Bridge(logging.Handler):
    """Renders records as flagwarden renders its events, onto flagwarden's stream."""

    def __init__(self, console: bool, stream: TextIO, level: int) -> None:
        super().__init__(level)
        renderer: structlog.typing.Processor = (
            # A plain traceback: the scrubbed text (rich's would show the frames' locals).
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
            if console
            else structlog.processors.JSONRenderer()
        )
        self.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[
                    structlog.processors.add_log_level,
                    structlog.stdlib.add_logger_name,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                ],
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    _scrub_event,
                    renderer,
                ],
            )
        )
        # structlog's writer for the stream: its lock keeps our lines whole beside its own.
        self._out = structlog.WriteLogger(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception as exc:  # a vendor's bad format string: its words, not a traceback
            try:
                line = self.format(_unformatted(record, exc))
            except Exception:
                return
        with contextlib.suppress(Exception):  # a broken stderr: nothing left to say it on
            self._out.msg(line)


def _unformatted(record: logging.LogRecord, exc: Exception) -> logging.LogRecord:
    said = f"{record.msg!s} (arguments {record.args!r} did not format: {exc})"
    return logging.makeLogRecord({**record.__dict__, "msg": said, "args": ()})


def _bridge() -> _Bridge | None:
    """The bridge, while it is still the root logger's (an application's later set-up may
    have replaced it: then Python's own behaviour again)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _Bridge):
            return handler
    return None


def _showwarning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A warning as one ``py.warnings`` record of the bridge (handed to it directly: no logger
    an application's ``dictConfig`` could disable stands in between)."""
    bridge = _bridge()
    if file is not None or bridge is None:
        original = warnings._showwarning_orig  # type: ignore[attr-defined]
        original(message, category, filename, lineno, file, line)
        return
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    bridge.handle(
        logging.LogRecord("py.warnings", logging.WARNING, filename, lineno, text, None, None)
    )


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught exception as one ``threading`` record of the bridge (what Python's
    default hook prints as plain text); SystemExit stays silent, as there."""
    bridge = _bridge()
    if bridge is None:
        threading.__excepthook__(args)
        return
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    record = logging.LogRecord(
        "threading",
        logging.ERROR,
        __file__,
        0,
        "Exception in thread %s",
        (name,),
        exc_info,  # type: ignore[arg-type]
    )
    bridge.handle(record)


def _uncaught(
    exc_type: type[BaseException], exc_value: BaseException, traceback: TracebackType | None
) -> None:
    """The exception that ends the program as one ``uncaught`` record of the bridge, rather
    than Python's plain-text traceback (a KeyboardInterrupt too: it ends the run)."""
    bridge = _bridge()
    if bridge is None:
        sys.__excepthook__(exc_type, exc_value, traceback)
        return
    record = logging.LogRecord(
        "uncaught",
        logging.CRITICAL,
        __file__,
        0,
        "Uncaught exception: the program ends",
        None,
        (exc_type, exc_value, traceback),
    )
    bridge.handle(record)


def _configured_by_application(root: logging.Logger) -> bool:
    """A handler of the application's on the root logger, or on a named logger whose records
    also reach the root (``propagate``): the bridge would print those twice. A library's
    ``NullHandler`` does not count, nor a framework's handler on a logger that does not
    propagate (dask.distributed's, Ray's: their lines stay theirs)."""
    if any(not isinstance(handler, _Bridge) for handler in root.handlers):
        return True
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if not getattr(logger, "propagate", False):
            continue
        handlers = getattr(logger, "handlers", ())
        if any(not isinstance(h, logging.NullHandler | _Bridge) for h in handlers):
            return True
    return False


def install(*, console: bool, stream: TextIO, level: int) -> bool:
    """Route the root logger's records through the bridge (see the module doc); False, and
    nothing changed, when the application put a handler of its own on the root logger or on
    any named logger."""
    root = logging.getLogger()
    with _lock:
        if _configured_by_application(root):
            return False
        for handler in list(root.handlers):  # flagwarden's, from an earlier configuration
            root.removeHandler(handler)
        root.addHandler(_Bridge(console, stream, level))
        root.setLevel(level)
        # Python's warnings and a thread's uncaught exception, too, so that every line of the
        # run's stderr is in one format (Python's own hooks print plain text).
        if warnings.showwarning is warnings._showwarning_orig:  # type: ignore[attr-defined]
            warnings.showwarning = _showwarning
        if threading.excepthook is threading.__excepthook__:
            threading.excepthook = _thread_exception
        if sys.excepthook is sys.__excepthook__:
            sys.excepthook = _uncaught
        if level < logging.WARNING:
            for name in QUIET_LOGGERS:
                logger = logging.getLogger(name)
                if logger.level == logging.NOTSET:
                    logger.setLevel(logging.WARNING)
    return True
