"""Message handlers declared per actor: ``@handles(MessageType)`` on a method instead of ``isinstance`` chains.

::

    class AssetActor(HandlerTable, pykka.ThreadingActor):
        @handles(Execute)
        def _execute(self, message: Execute) -> None: ...

:class:`HandlerTable` builds, once per class (subclasses inherit and may override), a table from
message type to method. ``on_receive`` (in the actor's own thread, like every pykka hook) looks the
message's exact type up and calls the method; a message nobody handles raises TypeError naming the
actor and the message, which pykka turns into the actor's failure. An actor that needs to do something
around every message (count it, commit after it) overrides ``on_receive`` and calls :meth:`handle`.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, TypeVar

__all__ = ["handles", "HandlerTable"]

F = TypeVar("F", bound=Callable[..., Any])


def handles(*message_types: type) -> Callable[[F], F]:
    """Mark a method as the handler of ``message_types`` (exact types: subclasses are not matched)."""
    if not message_types:
        raise TypeError("handles() needs at least one message type")

    def mark(fn: F) -> F:
        fn._handles = message_types  # type: ignore[attr-defined]
        return fn
    return mark


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

    def on_receive(self, message: Any) -> Any:
        return self.handle(message)
