"""Errors whose message is meant for the user: one sentence that says what to do."""


class MmsegError(Exception):
    """Base class: the command line prints the message alone, without a traceback."""


class ScanError(MmsegError):
    """A scan or label file that cannot be used."""


class WeightsError(MmsegError):
    """A weights file that is missing, corrupt or for another model."""


class OutputError(MmsegError):
    """An output file that cannot be written, or was not written whole."""


class DeviceError(MmsegError):
    """A compute device that was asked for but is not there."""


class HintError(MmsegError):
    """A correction hint (a click or scribble) that cannot be used: off the scan, unknown organ, bad file."""


class Cancelled(MmsegError):
    """The user cancelled a running segmentation."""
