"""Security profiles 1-3 for simulated sites: what the central system is given and what each charge point
simulator presents, with a throwaway PKI for the TLS profiles.

A simulated site (``coordinator run --simulate``, a scenario with ``devices = "sim"``) runs its charge
points in the same process as its central system, so it cannot use the operator's certificates: the
simulators would need the CA's private key to get client certificates that name their ids. Instead,
:func:`simulated_security` makes a CA of its own with ``trustme`` (in a folder the caller owns and
removes), a server certificate for ``127.0.0.1`` and ``localhost``, and for profile 3 one client
certificate per charge point whose commonName is its id. The TLS code paths that run are the real ones
(:func:`protocols.ocpp.security.server_context` and :func:`~protocols.ocpp.security.client_context`); only
the key material is made up.

========  ==========================================  =============================================
profile   central system                              each charge point
========  ==========================================  =============================================
0         no authentication                           nothing
1         Basic auth (``passwords``)                  its password
2         TLS (throwaway server certificate) + Basic  the throwaway CA and its password
3         TLS with client certificates (the CA)       the throwaway CA and its own certificate + key
========  ==========================================  =============================================
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["SimulatedSecurity", "simulated_security", "temporary_security"]

#: Charge point ids that are also valid DNS labels get a DNS subjectAltName too (a certificate needs one).
_DNS_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class SimulatedSecurity:
    """The outcome of :func:`simulated_security`: ``server`` is merged into the central system's keyword
    arguments; :meth:`charge_point` gives one simulator's keyword arguments."""

    profile: int
    server: Mapping[str, Any]
    clients: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: The folder of the PEM files when this object owns it (:func:`temporary_security`); :meth:`close`
    #: removes it.
    scratch: "tempfile.TemporaryDirectory[str] | None" = field(default=None, compare=False, repr=False)

    @property
    def directory(self) -> str | None:
        """The folder this object owns (its certificates are in it), or None."""
        return self.scratch.name if self.scratch is not None else None

    def close(self) -> None:
        """Remove the folder this object owns, if any (idempotent)."""
        if self.scratch is not None:
            self.scratch.cleanup()

    def charge_point(self, cp_id: str) -> dict[str, Any]:
        """Keyword arguments of :class:`~protocols.sim.chargepoint.ChargePointSim` for ``cp_id``."""
        return dict(self.clients.get(cp_id, {}))

    @property
    def scheme(self) -> str:
        """``wss`` under profiles 2 and 3, else ``ws``."""
        return "wss" if self.profile >= 2 else "ws"


def simulated_security(profile: int, ids: Iterable[str], directory: str | Path | None = None,
                       passwords: Mapping[str, str] | None = None) -> SimulatedSecurity:
    """Security profile ``profile`` (0-3) for the charge points ``ids``.

    ``passwords`` (profiles 1 and 2): id -> password; an id without one gets a random one. ``directory``
    (profiles 2 and 3): where the PEM files go (it must exist; the caller removes it).

    :raises ValueError: a profile outside 0-3, or a TLS profile without ``directory``.
    """
    if profile not in (0, 1, 2, 3):
        raise ValueError(f"security_profile: got {profile!r}, expected 0, 1, 2 or 3")
    ids = list(ids)
    server: dict[str, Any] = {"security_profile": profile}
    clients: dict[str, dict[str, Any]] = {cp_id: {} for cp_id in ids}
    if profile in (1, 2):
        import secrets
        given = dict(passwords or {})
        secret = {cp_id: given.get(cp_id) or secrets.token_urlsafe(16) for cp_id in ids}
        server["basic_auth"] = secret
        for cp_id in ids:
            clients[cp_id]["password"] = secret[cp_id]
    if profile >= 2:
        if directory is None:
            raise ValueError(f"security_profile {profile}: TLS needs a directory for the certificates")
        import trustme
        folder = Path(directory)
        ca = trustme.CA(organization_name="coordinator simulation")
        ca_cert = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_cert))
        leaf = ca.issue_cert("127.0.0.1", "localhost", common_name="central system (simulated)")
        tls_cert, tls_key = _write_leaf(leaf, folder, "central-system")
        server.update(tls_cert=tls_cert, tls_key=tls_key)
        for n, cp_id in enumerate(ids):
            clients[cp_id]["ca_cert"] = str(ca_cert)
            if profile == 3:
                san = cp_id if _DNS_LABEL.match(cp_id) else f"cp{n}.invalid"
                cert, key = _write_leaf(ca.issue_cert(san, common_name=cp_id), folder, f"cp{n}")
                clients[cp_id].update(client_cert=cert, client_key=key)
        if profile == 3:
            server["ca_cert"] = str(ca_cert)
    return SimulatedSecurity(profile, server, clients)


def temporary_security(profile: int, ids: Iterable[str], passwords: Mapping[str, str] | None = None,
                       prefix: str = "coordinator-sim-pki-") -> SimulatedSecurity:
    """:func:`simulated_security` with, under profiles 2 and 3, a temporary folder of its own for the PEM
    files (``directory``), removed by :meth:`SimulatedSecurity.close`."""
    if profile < 2:
        return simulated_security(profile, ids, None, passwords)
    scratch = tempfile.TemporaryDirectory(prefix=prefix)
    try:
        made = simulated_security(profile, ids, scratch.name, passwords)
    except BaseException:
        scratch.cleanup()
        raise
    return SimulatedSecurity(made.profile, made.server, made.clients, scratch)


def _write_leaf(leaf: Any, folder: Path, name: str) -> tuple[str, str]:
    """Write a trustme leaf certificate (with its chain) and its key as ``<name>.pem`` / ``<name>.key``."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)
