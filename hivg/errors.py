"""User-facing errors: pipelines print them as one line and exit with status 2."""


class UserError(Exception):
    """Bad input from the user (config, files, flags). The message names the key/file/value."""


class DataError(UserError):
    """A dataset file or row that cannot be used as given."""


class WeightsError(UserError):
    """A weights file that is missing or does not match the architecture."""
