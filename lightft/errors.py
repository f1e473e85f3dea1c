"""User-facing errors.

A `LightFTError` carries one line that names the file, line or config key at fault and says how to fix it.
`lightft.cli.main` prints it without a traceback and exits with status 2.
"""


class LightFTError(Exception):
    """A problem with the user's input (config, data, paths) that the user can fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
