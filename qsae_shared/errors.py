"""Domain errors of the shared package."""


class QsaeSharedError(Exception):
    """Base class of every error raised by `qsae_shared`."""


class DatasetMissingError(QsaeSharedError):
    """The Fashion-MNIST files are not where they should be."""


class WireFormatError(QsaeSharedError, ValueError):
    """Bytes or a document do not follow a wire format; the message says what is wrong."""


class SizeLimitError(WireFormatError):
    """A payload is larger than the configured cap."""


class SignatureError(QsaeSharedError):
    """A signature does not verify, or names a key that is not trusted."""


class ScenarioError(QsaeSharedError, ValueError):
    """A device-distribution description is invalid."""


class ArtifactError(QsaeSharedError):
    """A model artifact is missing, does not match its manifest, or cannot be unpacked."""
