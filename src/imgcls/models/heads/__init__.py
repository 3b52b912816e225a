"""Classification heads; importing this package registers every head in ``HEADS``."""

from imgcls.models.heads import arcface, attractor, fch, linear, multihead, sphere  # noqa: F401
