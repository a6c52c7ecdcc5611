"""OCPP security profiles 1-3: the TLS contexts of both ends, and how a charger's certificate is checked.

The profiles (OCPP 1.6 security whitepaper, edition 2+, section 2; OCPP 2.0.1 Part 2, A00 "Security
profiles"), and what this central system does for each:

=======  ======================================  ==============================================================
profile  transport and charger authentication    here
=======  ======================================  ==============================================================
0        plain ``ws://``, none                   anyone who reaches the port can connect as an allowed id
1        plain ``ws://``, HTTP Basic auth        username = charge point id, password per id (constant-time)
2        TLS ``wss://``, HTTP Basic auth         as 1, over TLS 1.2+ with the configured certificate and key
3        TLS ``wss://``, client certificate      the certificate must chain to the configured CA and name the
                                                 charge point id it connects as (its CN or a SAN)
=======  ======================================  ==============================================================

Profile 3: the OCTT test cases say the charger certificate's subject ``commonName`` "consists of the unique
serial number of the Charge Point" (1.6 TC_087_CS) and that the CSMS terminates the connection for an
unknown certificate, an expired one, and one "with commonName that does not equal the serial number of
the Charging Station" (2.0.1 TC_A_08_CSMS). A charger connects as ``.../<charge point id>``, so the id in
the URL must be named by the certificate: its CN, or (for certificates issued with the name only in the
subjectAltName extension) a DNS or URI subjectAltName.

Where a refusal happens, and how it is logged (always at WARNING, on ``protocols.ocpp.central_system``):

* during the TLS handshake, by OpenSSL: no certificate, one that does not chain to the CA (self-signed,
  another CA), an expired one, a plain ``ws://`` request on the TLS port, a TLS version below 1.2.
  asyncio drops such a failed handshake silently, so the server context's :class:`HandshakeLog` (its
  ``sslobject_class``, a documented hook of :class:`ssl.SSLContext`) logs the reason first;
* in the HTTP upgrade (``process_request``), before any OCPP frame: a valid certificate that names
  another charge point (HTTP 403); see :func:`check_client_certificate`.

TLS: 1.2 or later (``minimum_version``), as both specifications require. The server's cipher list is
Python's default (forward-secret ECDHE suites) plus the two RSA key-exchange AES-GCM suites that OCPP
lists among those a central system must support (TC_086_CSMS / TC_A_04_CSMS: TLS_RSA_WITH_AES_128_GCM_SHA256,
TLS_RSA_WITH_AES_256_GCM_SHA384), so that older chargers with RSA certificates can connect.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any, Mapping

log = logging.getLogger("protocols.ocpp.central_system")

__all__ = ["PROFILES", "HandshakeLog", "certificate_names", "check_client_certificate", "client_context",
           "handshake_failure_reason", "server_context"]

#: What each security profile means (for log lines and ``coordinator check``).
PROFILES: dict[int, str] = {
    0: "no authentication",
    1: "HTTP Basic auth over plain ws",
    2: "TLS (wss) with HTTP Basic auth",
    3: "TLS (wss) with client certificates",
}

# Python's default server cipher list, plus the RSA key-exchange AES-GCM suites OCPP requires (see above).
_SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:AES256-GCM-SHA384:AES128-GCM-SHA256:!aNULL:!eNULL:!SHA1"

# OpenSSL reasons of a failed handshake -> what it means for the operator.
_OLD_TLS = "the client offers no TLS version this central system accepts (TLS 1.2 or later)"
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate (security profile 3 requires one)",
    "HTTP_REQUEST": "a plain HTTP (ws://) request on the TLS port: this central system requires TLS (wss://)",
    "UNSUPPORTED_PROTOCOL": _OLD_TLS,
    "TLSV1_ALERT_PROTOCOL_VERSION": _OLD_TLS,
    "WRONG_VERSION_NUMBER": "the client does not speak TLS 1.2 or later",
    "NO_SHARED_CIPHER": "no cipher suite in common with the client",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust this central system's certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client refused this central system's certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the client refused this central system's certificate",
}


def handshake_failure_reason(exc: ssl.SSLError) -> str:
    """Why a TLS handshake failed, in words (a certificate check's own message when there is one)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate refused: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLEOFError):
        return "the client closed the connection during the TLS handshake"
    reason = str(exc.reason) if exc.reason else ""
    return _REASONS.get(reason, f"TLS handshake failed: {reason or exc}")


class HandshakeLog(ssl.SSLObject):
    """The server context's TLS object: logs why a handshake failed, then fails it as before.

    asyncio gives a failed server-side handshake to no one (not the websockets server, not the loop's
    exception handler: an ``ssl.SSLError`` is an ``OSError``, logged only in debug mode), so without this
    a refused charger would leave no trace. The peer's address is not known at this level: the line
    names the reason only.
    """

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # the handshake needs more bytes: not a failure
        except ssl.SSLError as exc:
            log.warning("refusing a connection during the TLS handshake: %s", handshake_failure_reason(exc))
            raise


def _readable(path: str | os.PathLike[str], what: str) -> str:
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{what}: no such file {p!r}")
    return p


def server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str],
                   ca: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """The central system's TLS context: TLS 1.2+, ``cert`` (PEM, the chain may follow the certificate)
    with its unencrypted ``key``; with ``ca`` (PEM, one or more CA certificates) every client must present
    a certificate that chains to it (security profile 3). Failed handshakes are logged (:class:`HandshakeLog`).

    :raises FileNotFoundError: a file is missing. :raises ssl.SSLError: a file is not what it should be.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_SERVER_CIPHERS)
    ctx.load_cert_chain(_readable(cert, "tls_cert"), _readable(key, "tls_key"))
    if ca is not None:
        ctx.load_verify_locations(cafile=_readable(ca, "ca_cert"))
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.sslobject_class = HandshakeLog
    return ctx


def client_context(ca: str | os.PathLike[str] | None = None, cert: str | os.PathLike[str] | None = None,
                   key: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A charge point's TLS context (the simulator's): TLS 1.2+, the server certificate checked against
    ``ca`` (default: the system's trust store) and its host name; with ``cert`` and ``key`` it presents a
    client certificate (security profile 3)."""
    ctx = ssl.create_default_context(cafile=os.fspath(ca) if ca is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key) if key is not None else None)
    return ctx


def certificate_names(peercert: Mapping[str, Any] | None) -> list[str]:
    """The names a verified peer certificate (``SSLObject.getpeercert()``) gives its owner: the subject's
    commonName(s), then its DNS and URI subjectAltNames."""
    if not peercert:
        return []
    names = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in peercert.get("subjectAltName", ()) if kind in ("DNS", "URI")]
    return names


def check_client_certificate(peercert: Mapping[str, Any] | None, cp_id: str) -> str | None:
    """None when the (already verified) certificate names ``cp_id``; else why the connection is refused.

    The commonName must equal the id exactly; a DNS subjectAltName is compared without regard to case
    (DNS names are case-insensitive, and certificate tools lower-case them), a URI one exactly.
    """
    if not peercert:
        return "no client certificate (security profile 3 requires one)"
    cns = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    sans = list(peercert.get("subjectAltName", ()))
    if cp_id in cns or any(kind == "URI" and value == cp_id for kind, value in sans):
        return None
    if any(kind == "DNS" and value.lower() == cp_id.lower() for kind, value in sans):
        return None
    named = ", ".join(repr(n) for n in certificate_names(peercert)) or "no name"
    return f"its client certificate names {named}, not the charge point id {cp_id!r} it connects as"
