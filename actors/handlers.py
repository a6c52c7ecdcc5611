"""Message handlers declared per actor: ``@handles(MessageType)`` on a method instead of ``isinstance`` chains.

::

    class AssetActor(HandlerTable, pykka.ThreadingActor):
        @handles(Execute)
        def _execute(self, message: Execute) -> None: ...

:class:`HandlerTable` builds, once per class (subclasses inherit and may override), a table from
message type to method. ``on_receive`` (in the actor's own thread, like every pykka hook) looks the
message's exact type up and calls the method; a message nobody handles raises TypeError naming the
actor and the message, which pykka turns into the actor's failure. An actor that needs to do something
around every message (count it, commit after it) overrides :meth:`HandlerTable.receive` and calls
:meth:`HandlerTable.handle`.

A :class:`Request` wraps any message with a ``reply`` callable: the actor handles the message as usual
and then calls ``reply(result, None)`` (or ``reply(None, exception)``) in its own thread. This is how
code on the asyncio loop asks an actor without blocking: ``reply`` hands the answer back to the loop
(``loop.call_soon_threadsafe``), so no thread waits (see :meth:`runtime.site.Site.ask_async`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar

__all__ = ["handles", "HandlerTable", "Request"]

F = TypeVar("F", bound=Callable[..., Any])


def handles(*message_types: type) -> Callable[[F], F]:
    """Mark a method as the handler of ``message_types`` (exact types: subclasses are not matched)."""
    if not message_types:
        raise TypeError("handles() needs at least one message type")

    def mark(fn: F) -> F:
        fn._handles = message_types  # type: ignore[attr-defined]
        return fn
    return mark


@dataclass(frozen=True, slots=True)
class Request:
    """``message``, answered through ``reply(result, error)`` instead of a pykka future (see the module docstring)."""
    message: Any
    reply: Callable[[Any, BaseException | None], None]


class HandlerTable:
    """Mixin for actors: dispatches ``on_receive`` through the class's ``@handles`` table."""

    _handlers: ClassVar[dict[type, Callable[[Any, Any], Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[type, Callable[[Any, Any], Any]] = {}
        for klass in reversed(cls.__mro__):  # a subclass's handler replaces its base's
            for attr in vars(klass).values():
                for message_type in getattr(attr, "_handles", ()):
                    table[message_type] = attr
        cls._handlers = table

    def handle(self, message: Any) -> Any:
        """Call the handler of ``message`` and return what it returns."""
        handler = self._handlers.get(type(message))
        if handler is None:
            raise TypeError(f"{type(self).__name__}: unexpected message {message!r}")
        return handler(self, message)

    def receive(self, message: Any) -> Any:
        """One message (override to wrap every message; the default calls :meth:`handle`)."""
        return self.handle(message)

    def on_receive(self, message: Any) -> Any:
        if type(message) is not Request:
            return self.receive(message)
        try:
            result = self.receive(message.message)
        except Exception as exc:  # the asker gets the error; the actor carries on, as with an ask
            message.reply(None, exc)
            return None
        message.reply(result, None)
        return None
