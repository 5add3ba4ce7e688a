"""The one exception type for problems a user can fix (bad input, bad config)."""


class UserError(Exception):
    """A problem the user can fix. The message names the problem and the fix.

    The CLI prints it without a traceback (``--debug`` shows one) and exits with code 2.
    """
