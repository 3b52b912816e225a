"""WordNet taxonomies, offline (seed 002, SPEC §3.1).

ImageNet labels are WordNet 3.0 noun ids (``n01443537`` →
``wordnet.synset_from_pos_and_offset('n', 1443537)``); ``synset.hypernym_paths()`` gives every
root → synset path (root ``entity.n.01``), which :mod:`imgcls.taxonomy.builders` turns into a
pruned tree.

Where WordNet comes from (no network access is ever attempted):

1. The Debian packages ``wordnet-base`` (dictionary files in ``/usr/share/wordnet``) and
   ``wordnet-sense-index`` (``index.sense``, which nltk needs). nltk cannot read that folder
   directly: it refuses paths outside its data path and symlinks into it, and Debian does not
   ship the ``lexnames`` file. We therefore copy the dictionary files once into
   ``$IMGCLS_CACHE/nltk_data/corpora/wordnet`` (default ``~/.cache/imgcls``), write the
   standard WordNet 3.0 ``lexnames`` file next to them, add that ``nltk_data`` folder to
   ``nltk.data.path`` and read it with nltk's ``WordNetCorpusReader``.
2. Otherwise an installed nltk ``wordnet`` corpus (``python -m nltk.downloader wordnet``).

Neither → :class:`~imgcls.errors.DataError` saying what to install.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imgcls.errors import DataError
from imgcls.taxonomy.builders import check_rule, taxonomy_from_paths
from imgcls.taxonomy.tree import Taxonomy

DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")

#: Files nltk's WordNet reader opens (``lexnames`` is generated, see ``_LEXNAMES``).
WORDNET_FILES = (
    "cntlist.rev",
    "index.sense",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
)

#: The WordNet 3.0 lexicographer files, in file-number order (``lexnames`` of the Princeton
#: distribution: number, name, syntactic category 1 noun / 2 verb / 3 adj / 4 adv).
_LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_LEX_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

#: Fashion-MNIST classes → WordNet 3.0 synsets (checked in tests). With ``first_path`` they give
#: artifact → {clothing → {garment → {shirt → {Shirt#self, T-shirt}, trouser, pullover, coat},
#: dress}, footwear → {shoe → {sandal, sneaker}, boot}, bag} (``shortest_path`` puts clothing
#: and footwear under ``covering.n.02``). ``jersey.n.03`` is WordNet's
#: "T-shirt, tee shirt" (a hyponym of ``shirt.n.01``, so *Shirt* is an internal-node class);
#: ``bag.n.04`` is "handbag, purse"; ``gym_shoe.n.01`` is "sneaker".
FASHION_MNIST_SYNSETS: dict[str, str] = {
    "T-shirt/top": "jersey.n.03",
    "Trouser": "trouser.n.01",
    "Pullover": "pullover.n.01",
    "Dress": "dress.n.01",
    "Coat": "coat.n.01",
    "Sandal": "sandal.n.01",
    "Shirt": "shirt.n.01",
    "Sneaker": "gym_shoe.n.01",
    "Bag": "bag.n.04",
    "Ankle boot": "boot.n.01",
}

#: Built-in class → synset maps, recognised by their exact class-name lists.
BUILTIN_SYNSETS: dict[str, dict[str, str]] = {"fashion_mnist": FASHION_MNIST_SYNSETS}

_WNID = re.compile(r"^n\d{8}$")


def cache_root() -> Path:
    """``$IMGCLS_CACHE`` or ``~/.cache/imgcls``."""
    return Path(os.environ.get("IMGCLS_CACHE") or "~/.cache/imgcls").expanduser()


def prepare_nltk_wordnet(source: Path = DEBIAN_WORDNET_DIR, cache: Path | None = None) -> Path:
    """Copy the dictionary files of ``source`` into ``<cache>/nltk_data/corpora/wordnet`` (plus a
    generated ``lexnames``) unless an up-to-date copy exists; return the ``nltk_data`` folder.

    Written to a temporary folder and renamed into place, so concurrent processes never see a
    half-copied corpus.
    """
    source = Path(source)
    missing = [f for f in WORDNET_FILES if not (source / f).is_file()]
    if missing:
        package = (
            "wordnet-sense-index" if missing == ["index.sense"] else "wordnet-base and wordnet-sense-index"
        )
        raise DataError(
            f"WordNet files {', '.join(missing[:3])} missing in {source} (install Debian {package})"
        )
    nltk_data = (cache or cache_root()) / "nltk_data"
    target = nltk_data / "corpora" / "wordnet"
    stamp = "\n".join(f"{f} {(source / f).stat().st_size}" for f in WORDNET_FILES) + "\n"
    if (target / "imgcls-source.txt").is_file() and (target / "imgcls-source.txt").read_text() == stamp:
        return nltk_data
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    except OSError as exc:  # e.g. HOME not writable (a service account): say which setting picks the folder
        raise DataError(
            f"cannot write the WordNet copy NLTK reads to '{target.parent}' ({exc.strerror or exc}); set "
            "IMGCLS_CACHE to a writable folder"
        ) from None
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp gives 0700; the renamed folder gets the normal mode
    try:
        for f in WORDNET_FILES:
            shutil.copyfile(source / f, tmp / f)
        (tmp / "lexnames").write_text(
            "".join(
                f"{i:02d}\t{name}\t{_LEX_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)
            )
        )
        (tmp / "imgcls-source.txt").write_text(stamp)
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process renamed its copy first; use that one
            if not (target / "imgcls-source.txt").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return nltk_data


@functools.lru_cache(maxsize=2)
def _reader_from(nltk_data: str) -> Any:
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if nltk_data not in nltk.data.path:
        nltk.data.path.append(nltk_data)  # nltk only reads below its data path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available" (no OMW)
        return WordNetCorpusReader(str(Path(nltk_data) / "corpora" / "wordnet"), None)


@functools.lru_cache(maxsize=1)
def _installed_nltk_wordnet() -> Any:
    import nltk

    nltk.data.find("corpora/wordnet")  # LookupError when absent (also finds wordnet.zip)
    from nltk.corpus import wordnet

    wordnet.ensure_loaded()
    return wordnet


def load_wordnet(source: Path = DEBIAN_WORDNET_DIR, cache: Path | None = None) -> Any:
    """An nltk WordNet reader: the Debian files (copied into the cache), else nltk's corpus."""
    if all((Path(source) / f).is_file() for f in WORDNET_FILES):
        return _reader_from(str(prepare_nltk_wordnet(source, cache)))
    try:
        return _installed_nltk_wordnet()
    except LookupError:
        raise DataError(
            "WordNet not found: install the Debian packages wordnet-base and wordnet-sense-index "
            f"(files in {source}), or the nltk corpus with `python -m nltk.downloader wordnet`"
        ) from None


def synset_for_wnid(wn: Any, wnid: str) -> Any:
    """``n01443537`` → ``Synset('goldfish.n.01')`` (WordNet 3.0 noun offset)."""
    if not _WNID.match(wnid):
        raise DataError(f"'{wnid}' is not a WordNet noun id (expected 'n' + 8 digits, e.g. n01443537)")
    try:
        synset = wn.synset_from_pos_and_offset("n", int(wnid[1:]))
    except Exception:  # nltk raises WordNetError / ValueError for some bad offsets, returns None for others
        synset = None
    if synset is None:
        raise DataError(f"WordNet id '{wnid}' is not a WordNet 3.0 noun synset")
    return synset


def synset_by_name(wn: Any, name: str) -> Any:
    try:
        return wn.synset(name)
    except Exception:  # nltk raises WordNetError / ValueError for bad names
        raise DataError(f"'{name}' is not a WordNet synset name (expected e.g. 'shirt.n.01')") from None


def hypernym_paths(synset: Any) -> list[list[str]]:
    """All root → synset paths as lists of synset names, in a deterministic order.

    Same paths as nltk's ``Synset.hypernym_paths()``, but hypernyms are visited in synset-name
    order: recent nltk keeps a synset's pointers in a ``set``, so its own path order changes
    with ``PYTHONHASHSEED`` from one process to the next, which would make the ``first_path``
    rule pick different parents on different runs (nltk ≤ 3.8 sorted by name, as we do).
    """
    hypers = sorted(synset.hypernyms() + synset.instance_hypernyms(), key=lambda s: s.name())
    if not hypers:
        return [[synset.name()]]
    return [[*path, synset.name()] for h in hypers for path in hypernym_paths(h)]


def builtin_synsets(class_names: Sequence[str]) -> dict[str, str] | None:
    """The built-in synset map whose class names equal ``class_names`` (any order), if any."""
    names = set(map(str, class_names))
    for mapping in BUILTIN_SYNSETS.values():
        if set(mapping) == names:
            return mapping
    return None


def taxonomy_from_wordnet(
    class_names: Sequence[str],
    rule: str = "first_path",
    synsets: Mapping[str, str] | None = None,
    wn: Any = None,
) -> Taxonomy:
    """WordNet taxonomy for ``class_names``: WordNet ids, or names mapped by ``synsets``
    (class name → synset name) or by a built-in map (Fashion-MNIST)."""
    check_rule(rule)
    class_names = [str(c) for c in class_names]
    if synsets is None and not all(_WNID.match(c) for c in class_names):
        synsets = builtin_synsets(class_names)
        if synsets is None:
            raise DataError(
                "data.taxonomy=wordnet needs WordNet-id class names (n01443537 ...) or a synset map; "
                f"classes like '{next(c for c in class_names if not _WNID.match(c))}' have none: use a parent-map or "
                "CSV taxonomy file instead"
            )
    if synsets is not None:
        missing = [c for c in class_names if c not in synsets]
        if missing:
            raise DataError(f"no WordNet synset given for classes: {', '.join(missing[:5])}")
    wn = wn if wn is not None else load_wordnet()
    paths = []
    for c in class_names:
        synset = synset_by_name(wn, synsets[c]) if synsets is not None else synset_for_wnid(wn, c)
        paths.append(hypernym_paths(synset))
    return taxonomy_from_paths(paths, class_names, rule, source="wordnet")


def taxonomy_from_wnids(wnids: Sequence[str], rule: str = "first_path", wn: Any = None) -> Taxonomy:
    """Taxonomy over ImageNet-style WordNet ids (tiny-ImageNet: the 200 folder names)."""
    bad = [w for w in wnids if not _WNID.match(str(w))]
    if bad:
        raise DataError(f"'{bad[0]}' is not a WordNet noun id (expected 'n' + 8 digits, e.g. n01443537)")
    return taxonomy_from_wordnet(list(wnids), rule=rule, wn=wn)
