"""``python -m imgcls`` (also what torchrun launches for DDP)."""

from imgcls.cli import main

main()
