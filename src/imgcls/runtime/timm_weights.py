"""A local weights file loaded by timm's own pretrained loader (Wightman, PyTorch Image Models), checked to fit.

``timm.create_model(..., pretrained_cfg_overlay={"file": f})`` loads ``f`` through timm's ``load_pretrained``,
which keeps timm's per-model key remapping (``filter_fn``) and in-channel adaptation, but loads **non-strictly**
whenever the model's ``num_classes`` differs from the weights' default — always so for an imgcls backbone
(``num_classes=0``) or a feature-only teacher. A file lacking some of the model's weights (a truncated export,
another variant of the family) then leaves them at random initialisation, and timm only says so in an INFO log
line. :func:`checked_timm_weights_file` wraps the ``create_model`` call, collects the keys timm's loader reports,
and turns a file that does not fit into one ``CheckpointError`` line; mis-shaped tensors (timm's RuntimeError)
become the same one line.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

from imgcls.errors import CheckpointError
from imgcls.runtime.checkpoint import describe_load_error

#: the logger of timm's pretrained loader (``timm/models/_builder.py``)
TIMM_LOADER_LOGGER = "timm.models._builder"

# timm ≥ 1.0: "Missing keys (a, b) discovered while loading pretrained weights. …" (INFO) and
# "Unexpected keys (a, b) found while loading pretrained weights. …" (WARNING); pinned by tests
_KEYS_REPORT = re.compile(
    r"^(Missing|Unexpected) keys \((.*?)\) (?:discovered|found) while loading pretrained weights"
)


class _KeyReports(logging.Filter):
    """Records timm's missing/unexpected-key reports; lets a record through only at the level it would have had."""

    def __init__(self, passes_from: int) -> None:
        super().__init__()
        self.passes_from = passes_from
        self.keys: dict[str, list[str]] = {"Missing": [], "Unexpected": []}

    def filter(self, record: logging.LogRecord) -> bool:
        found = _KEYS_REPORT.match(record.getMessage())
        if found is not None:
            self.keys[found.group(1)].extend(k for k in found.group(2).split(", ") if k)
            if found.group(1) == "Missing":
                return False  # reported as an error below, not as a log line too
        return record.levelno >= self.passes_from


def _keys(names: list[str]) -> str:
    more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


@contextlib.contextmanager
def checked_timm_weights_file(file: str | None, what: str, target: str, fix: str) -> Iterator[None]:
    """Around a ``timm.create_model`` call that loads ``file`` (nothing is checked when ``file`` is None).

    ``what`` names the setting (``model.pretrained_file``), ``target`` the model (``timm:resnet18``) and ``fix`` the
    advice; the raised ``CheckpointError`` reads "``what`` '``file``' does not fit ``target`` (missing: …); ``fix``".
    """
    if file is None:
        yield
        return
    logger = logging.getLogger(TIMM_LOADER_LOGGER)
    reports = _KeyReports(passes_from=logger.getEffectiveLevel())
    level = logger.level
    logger.setLevel(min(logging.INFO, logger.getEffectiveLevel()))
    logger.addFilter(reports)
    try:
        yield
    except RuntimeError as exc:
        misfit = describe_load_error(exc)
        if misfit is None:
            raise
        raise CheckpointError(f"{what} '{file}' does not fit {target} ({misfit}); {fix}") from None
    finally:
        logger.removeFilter(reports)
        logger.setLevel(level)
    missing = reports.keys["Missing"]
    if missing:
        raise CheckpointError(
            f"{what} '{file}' does not fit {target} (missing: {_keys(missing)}; they would stay randomly initialised); {fix}"
        )
