"""engine package (importing it registers the objectives in ``engine/objective.py``'s factory list)."""

from imgcls.engine import distillation  # noqa: F401  (registers the distillation objective)
