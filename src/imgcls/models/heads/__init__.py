"""Classification heads; importing this package registers every head in ``HEADS``."""

from imgcls.models.heads import arcface, attractor, fch, linear, multihead, sphere, two_token  # noqa: F401
