"""The one exception type that means "the user asked for something that cannot be done".

The CLI turns it into a single line on stderr and exit status 2; anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """Bad input from the user: a missing path, an unreadable file, a wrong value."""
