"""The protocol boundary: bacpypes3 errors, rejects, aborts and timeouts become gateway.domain.errors types.

bacpypes3 raises ErrorPDU / RejectPDU / AbortPDU (all `ErrorRejectAbortNack`), which derive from
BaseException: `except Exception` lets them through, so every request goes through `guarded`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from bacpypes3.apdu import AbortPDU, ErrorPDU, ErrorRejectAbortNack, RejectPDU

from gateway.domain.errors import (
    ConfigurationFault,
    DeviceBusy,
    DeviceError,
    DeviceRejected,
    DeviceTimeout,
    DeviceUnreachable,
    MalformedReply,
)

T = TypeVar("T")


class ObjectMissing(ConfigurationFault):
    """The device says the configured object or property does not exist (unknown-object, unknown-property,
    unsupported-object-type): the point is blind, a point_unavailable alarm, not a reason to stop reading
    the device's other points."""


# Error codes that say the configured object or property is not there (a subset of the configuration faults).
MISSING_CODES = frozenset({"unknown-object", "unknown-property", "unsupported-object-type"})

# Error codes that say the request itself is wrong for this device: a configuration fault, do not hammer.
_CONFIG_CODES = frozenset(
    {
        "unknown-object",
        "unknown-property",
        "write-access-denied",
        "value-out-of-range",
        "invalid-data-type",
        "property-is-not-an-array",
        "invalid-array-index",
        "unsupported-object-type",
        "optional-functionality-not-supported",
    }
)
_BUSY_CODES = frozenset({"operational-problem", "busy", "device-busy", "other"})
_CONFIG_REJECTS = frozenset({"unrecognized-service", "undefined-enumeration", "parameter-out-of-range"})


def property_error(device_id: str, what: str, code: str) -> ConfigurationFault:
    """A per-property error inside a ReadPropertyMultiple answer, by its error code."""
    cls = ObjectMissing if code in MISSING_CODES else ConfigurationFault
    return cls(device_id, f"{what}: {code}", code)


def translate(device_id: str, exc: BaseException) -> DeviceError:
    """One bacpypes3 failure as the project's typed error."""
    if isinstance(exc, ErrorPDU):
        error_class = str(getattr(exc, "errorClass", "") or "")
        code = str(getattr(exc, "errorCode", "") or "")
        text = f"BACnet error {error_class}: {code}"
        if code in MISSING_CODES:
            return ObjectMissing(device_id, text, code)
        if code in _CONFIG_CODES:
            return ConfigurationFault(device_id, text, code)
        if code in _BUSY_CODES:
            return DeviceBusy(device_id, text, code)
        return DeviceRejected(device_id, text, code)
    if isinstance(exc, RejectPDU):
        reason = str(exc.apduAbortRejectReason)
        if reason in _CONFIG_REJECTS:
            return ConfigurationFault(device_id, f"BACnet reject: {reason}", reason)
        return DeviceRejected(device_id, f"BACnet reject: {reason}", reason)
    if isinstance(exc, AbortPDU):
        reason = str(exc.apduAbortRejectReason)
        if reason == "no-response":
            return DeviceTimeout(device_id, "no answer (BACnet abort no-response)")
        return DeviceRejected(device_id, f"BACnet abort: {reason}", reason)
    if isinstance(exc, TimeoutError):
        return DeviceTimeout(device_id, "no answer within the timeout")
    if isinstance(exc, OSError):
        return DeviceUnreachable(device_id, f"network error: {exc}")
    if isinstance(exc, ErrorRejectAbortNack):
        return DeviceRejected(device_id, f"BACnet failure: {exc}")
    return MalformedReply(device_id, f"{type(exc).__name__}: {exc}")


async def guarded(device_id: str, deadline: float, request: Awaitable[T]) -> T:
    """Await one BACnet request with a deadline; failures come out as DeviceError subclasses only."""
    try:
        # bacpypes3's own APDU timeout (the device timeout) normally fires first and aborts the
        # transaction cleanly; this deadline is the backstop.
        async with asyncio.timeout(deadline * 1.2 + 0.05):
            return await request
    except TimeoutError:
        raise DeviceTimeout(device_id, f"no answer within {deadline:g}s") from None
    except (ErrorRejectAbortNack, OSError) as exc:
        raise translate(device_id, exc) from None
    except (ValueError, TypeError, AttributeError) as exc:  # decoding trouble inside bacpypes3
        raise MalformedReply(device_id, f"{type(exc).__name__}: {exc}") from None
