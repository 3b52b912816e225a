"""Classification heads; importing this package registers every head in ``HEADS``."""

from imgcls.models.heads import linear  # noqa: F401
