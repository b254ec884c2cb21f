"""The project's typed errors. Protocol libraries' exceptions are translated into these at the boundary."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A site config (or overlay) is invalid; `problems` holds one line per problem, file:line first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SiteConfigFault(GatewayError):
    """The running gateway found that a value of the site config cannot work (an address the protocol stack
    refuses, a port another process holds). Not restarted: it names the config path and what is wrong, and
    the gateway stops at once with exit code 2, without a traceback."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class DeviceError(GatewayError):
    """A device could not be read or written. Subclasses say why, so callers can react by class."""

    def __init__(self, device_id: str, message: str) -> None:
        super().__init__(f"{device_id}: {message}")
        self.device_id = device_id


class DeviceTimeout(DeviceError):
    """No answer within the configured timeout."""


class DeviceUnreachable(DeviceError):
    """Connection refused, reset or not possible; or a gateway reports the target absent."""


class DeviceRejected(DeviceError):
    """The device answered with an error (Modbus exception, BACnet error/reject/abort)."""

    def __init__(self, device_id: str, message: str, code: int | str | None = None) -> None:
        super().__init__(device_id, message)
        self.code = code


class ConfigurationFault(DeviceRejected):
    """The device says the request itself is wrong (illegal function/address/value): do not hammer it."""


class DeviceBusy(DeviceRejected):
    """The device is busy or failing for now (Modbus 04/05/06): back off and retry."""


class MalformedReply(DeviceError):
    """The device's reply could not be decoded."""


class VerificationFailed(DeviceError):
    """A write was accepted but the read-back shows another value."""


class NotAccepted(GatewayError):
    """An event sink could not durably accept a batch (journal disk full, I/O error, read-only file system,
    sink closed). Nothing of the step that made the batch took effect: the normaliser rolled it back, and an
    adapter offers the reading (or device status) again later instead of recording it as handed on."""


class DeliveryError(GatewayError):
    """The meldkamer link failed (broker unreachable, TLS failure, publish timed out)."""
