"""The one exception type for user-facing errors: its message is printed as a single line."""


class EmoError(Exception):
    """A problem with the user's input (file, model, camera, data) that a user can fix.

    The message names the thing and says what to do; CLIs print it on one line and exit non-zero.
    """
