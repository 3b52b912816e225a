"""Classification heads; importing this package registers every head in ``HEADS``."""

from imgcls.models.heads import fch, linear  # noqa: F401
