"""A simulated OCPP 1.6 / 2.0.1 charge point (:class:`ChargePointSim`), split the way the ``ocpp`` library
is: the simulator itself (:mod:`.simulator`), and one room per version for the calls it answers
(:mod:`.v16`, :mod:`.v201`)."""

from runtime.core.errors import SimNotConnected

from .simulator import ChargePointSim, ReceivedCall

__all__ = ["ChargePointSim", "ReceivedCall", "SimNotConnected"]
