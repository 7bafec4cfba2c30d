"""Where each benchmark's files come from, with their sha256 and size (see each dataset's SOURCE.md).

Every file has its path inside the dataset folder (``train.txt``, ``ids/entity2id.txt``), a public
source pinned to a commit (a raw.githubusercontent.com URL, or a member of a zip archive at such a
URL), the sha256 and size of the file itself (for archive members: of the extracted member; the
archive's own hash is not known), and whether it is *required*:

- required: the reader cannot load the dataset without it;
- optional: the reader falls back without it (e.g. Wikidata12k relation labels -> P-ids, ICEWS14
  ids/*2id.txt -> numbering by first appearance). Optional files that have a public source are
  still downloaded by default, so a download gives the same dataset as the reference copy.

Files without a public source (``url is None``: Wikidata12k's derived ``entity_labels_partial_*``)
are listed so that a copy placed by hand is checksummed, but they are never downloaded.

Files no reader needs (``triple2id.txt``, ``stat.txt``, ICEWS14 ``ids/{train,valid,test}.txt``)
are not listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from distkg.errors import DataError

__all__ = ["FileEntry", "DatasetSpec", "DATASETS", "get_dataset", "known_datasets"]

_GH = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class FileEntry:
    """One file of a dataset folder."""

    path: str  # relative path inside the dataset folder, '/'-separated
    sha256: str  # of the file itself (an archive member: of the extracted member)
    size: int  # bytes
    required: bool
    url: str | None  # public source pinned to a commit; None: no public source (never downloaded)
    member: str | None = None  # when set, ``url`` is a zip archive and this is the member's name in it
    note: str = ""

    @property
    def downloadable(self) -> bool:
        return self.url is not None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    files: tuple[FileEntry, ...]
    source: str  # one line: repositories and commits; details in SOURCE.md
    license: str  # as stated by the source repositories

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    @property
    def downloadable_files(self) -> tuple[FileEntry, ...]:
        return tuple(f for f in self.files if f.downloadable)


# --------------------------------------------------------------------------------------- sources
_ATISE = f"{_GH}/soledad921/ATISE/711e2136e10b54acbdd7a69ad7822837ce5c44c8"
_TEILP = f"{_GH}/xiongsiheng/TEILP/8c2195f7e76da19ed92dc19df18c82f312f97e5e"
_MMKB = f"{_GH}/nle-ml/mmkb/dc1c89cac110ddbb9944d6ed5ab2b3c2339d320c"
_DIFFUTKG_ICEWS18_ZIP = f"{_GH}/AONE-NLP/DiffuTKG/1378a0fffdafca4ddf8634df1546be3b9743f018/data/ICEWS18.zip"


_YAGO11K = DatasetSpec(
    name="yago11k",
    source="soledad921/ATISE yago/ @ 711e2136 (data from HyTE, Dasgupta et al. EMNLP 2018)",
    license="MIT (ATISE repository); facts from YAGO3 (CC BY)",
    files=(
        FileEntry("train.txt", "e709ff0e8eced3ec9332dba5c5da95c0db403f8eddda52f3b100486b63c4e580", 551749, True,
                  f"{_ATISE}/yago/train.txt"),
        FileEntry("valid.txt", "f3a3946235b078070e6bac0cd2bf6f51bd9cedc394c406873a21141a447730c7", 68736, True,
                  f"{_ATISE}/yago/valid.txt"),
        FileEntry("test.txt", "cc94fd96f8fbacb97cb3e75e3aa8cf2c753acd0ee4e2ae56632f7495278f1b7f", 68750, True,
                  f"{_ATISE}/yago/test.txt"),
        FileEntry("entity2id.txt", "3a5482d19f80b3936ca735ea105db799f5c500b170c57f7a59f0ea2650231789", 494943, True,
                  f"{_ATISE}/yago/entity2id.txt"),
        FileEntry("relation2id.txt", "83e460205fa11720980c814aa99d70b4ec42ff9571f7ce9915390e262fc8dc34", 140, True,
                  f"{_ATISE}/yago/relation2id.txt"),
    ),
)

_WIKIDATA12K = DatasetSpec(
    name="wikidata12k",
    source="soledad921/ATISE wikidata/ @ 711e2136; relation labels from xiongsiheng/TEILP @ 8c2195f7",
    license="MIT (ATISE, TEILP repositories); Wikidata content CC0",
    files=(
        FileEntry("train.txt", "90b42097c9741fada0f81fc5f1be1cb3c0eb0f8bfcf3f5de833dd252b98d069b", 1144608, True,
                  f"{_ATISE}/wikidata/train.txt"),
        FileEntry("valid.txt", "ade5b9c50b985fcf4948b7edde69c65ff8b7c993ea545cd40dc62fc70b5e2e52", 144293, True,
                  f"{_ATISE}/wikidata/valid.txt"),
        FileEntry("test.txt", "f9d6b1bbeba58e94298a5655485b7ca3d1d449ba310b8755b32abafc5ec1da6f", 144550, True,
                  f"{_ATISE}/wikidata/test.txt"),
        FileEntry("entity2id.txt", "307628d198b9369b650d46bb88980b38ed0957a9e8148227c94907f9b2804f01", 166023, True,
                  f"{_ATISE}/wikidata/entity2id.txt"),
        FileEntry("relation2id.txt", "50e6d3c632dde882c8a84aece1eda1f640f4a79a184033eb0941c10dad90e517", 178, True,
                  f"{_ATISE}/wikidata/relation2id.txt"),
        FileEntry("relation2id_with_labels.txt", "fef14b3c161de028344d90be2e53a94d7fdb4cc18b5aa5622ab58051c8887582",
                  624, False, f"{_TEILP}/data/WIKIDATA12k/relation2id.txt",
                  note="English relation labels; without it relations are shown as P-ids"),
        FileEntry("entity_labels_partial_fb15k.tsv",
                  "e38b4ba17b56a0838827599dfce5490c218349573a180964c93d838189fe5132", 120129, False, None,
                  note="derived (villmow/datasets_knowledge_embedding FB15k-237 labels, MIT); no public source; "
                       "without it entities are shown as Q-ids"),
        FileEntry("entity_labels_partial_yagowiki.tsv",
                  "c445c881136e2c2e1b5674b2692083a872ef330243010ab6b019ca788b51333f", 164124, False, None,
                  note="derived (soledad921/TEA-GNN alignments, CC BY-NC 4.0); no public source; "
                       "read only with data.noncommercial_labels"),
    ),
)

_ICEWS14 = DatasetSpec(
    name="icews14",
    source="nle-ml/mmkb TemporalKGs/icews14/ @ dc1c89ca (García-Durán et al. EMNLP 2018); "
           "id maps from xiongsiheng/TEILP @ 8c2195f7",
    license="BSD-3-Clause (mmkb), MIT (TEILP); events from ICEWS (Harvard Dataverse terms)",
    files=(
        FileEntry("train.txt", "a6c7922dcbe406b3e292a313b4eab191e2399c3bc4810f662bb4363043a93df6", 5023924, True,
                  f"{_MMKB}/TemporalKGs/icews14/icews_2014_train.txt"),
        FileEntry("valid.txt", "23dfa5cd6f3bb5421efcc30fc03bed0e8de4c2cf251d1765ff722d6f8b15dbe3", 614786, True,
                  f"{_MMKB}/TemporalKGs/icews14/icews_2014_valid.txt"),
        FileEntry("test.txt", "50d53602409a3dbaca2f13d9c7e30bf7311d8c1868fac890dc0c2836118b4cb4", 617988, True,
                  f"{_MMKB}/TemporalKGs/icews14/icews_2014_test.txt"),
        FileEntry("ids/entity2id.txt", "23918268cde6dbb6b7c674e5a29ac2c51c87e176a7dabe2fbcbea7993b421db4", 198043,
                  False, f"{_TEILP}/data/icews14/entity2id.txt",
                  note="TEILP's entity numbering; without it ids follow first appearance"),
        FileEntry("ids/relation2id.txt", "65906b26c3b588c6e57fb5471c59d1610209df30ce93d51a20927a766dc5d14c", 7626,
                  False, f"{_TEILP}/data/icews14/relation2id.txt",
                  note="TEILP's relation numbering; without it ids follow first appearance"),
    ),
)

_ICEWS18 = DatasetSpec(
    name="icews18",
    source="AONE-NLP/DiffuTKG data/ICEWS18.zip @ 1378a0ff (RE-GCN layout of RE-Net's ICEWS18)",
    license="not stated by the source repositories; events from ICEWS (Harvard Dataverse terms)",
    files=(
        FileEntry("train.txt", "0f1746782f70e0a2e7bb7be73592b155f0e329117da982b5a2fce3bf3e499045", 5932229, True,
                  _DIFFUTKG_ICEWS18_ZIP, member="train.txt"),
        FileEntry("valid.txt", "5a64212063561529370010d5e3a449cc8fa4d4a1c202de78997b09b83341f13a", 739599, True,
                  _DIFFUTKG_ICEWS18_ZIP, member="valid.txt"),
        FileEntry("test.txt", "4053a3c290aa6a478db5a46524e8688b20eabccaea9fde57927eb1c727224744", 803211, True,
                  _DIFFUTKG_ICEWS18_ZIP, member="test.txt"),
        FileEntry("entity2id.txt", "7847abe5769eb55efced507743ee13ace96b5c16586e43dd3f53dfc77f72d430", 697237, True,
                  _DIFFUTKG_ICEWS18_ZIP, member="entity2id.txt"),
        FileEntry("relation2id.txt", "c3d1d7d758060d3785623bbe6834c8678fb3ddcc7b30f6fdb6ec97b55b9aa7d7", 9028, True,
                  _DIFFUTKG_ICEWS18_ZIP, member="relation2id.txt"),
    ),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (_YAGO11K, _WIKIDATA12K, _ICEWS14, _ICEWS18)}


def known_datasets() -> list[str]:
    return sorted(DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    """The spec of a dataset by (case-insensitive) name; DataError listing the known names otherwise."""
    spec = DATASETS.get(str(name).lower())
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(known_datasets())}")
    return spec
