"""The site's actors, one concept per module, each a ``pykka.ThreadingActor``:

* :mod:`.dispatcher`: :class:`DispatcherActor` keeps the command table and fans due commands out;
* :mod:`.asset`: :class:`AssetActor`, one per charger or battery, owns its state machine and device link;
* :mod:`.supervisor`: :class:`SupervisorActor` starts and restarts asset actors (OTP-style intensity);
* :mod:`.event_actor`: :class:`EventActor` broadcasts lifecycle events to one subscriber actor each;
* :mod:`.edge_link`: the edge end of the cloud command channel;
* :mod:`.messages`: every message they exchange (frozen dataclasses); :mod:`.handlers`: ``@handles``.

Actors import the ground floor (``runtime.core``) and the device boundary (``protocols.base``), never a
particular protocol: the site hands each asset actor its device link.
"""
