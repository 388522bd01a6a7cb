"""The dataset catalog: which EM datasets go into a corpus, with provenance and licence.

A catalog is a YAML file validated by pydantic. One entry per dataset: where it lives (a URI any
`em5m.sources` connector understands), what it is (modality, species, tissue), its licence and
citation, and how to sample it. An entry without a licence is refused: a corpus must be able to
say under which terms every tile may be used. A refused entry is left out and recorded
(`Catalog.rejected`); the other entries are still used.

Example YAML::

    version: 1
    defaults:
      tile_size: 224
      pixel_sizes_nm: [8.0]
    datasets:
      - id: lucchi_pp
        uri: file://${EMSSL_DATA}/lucchi_pp/train/images
        modality: FIB-SEM
        species: mouse
        organ: brain
        tissue: hippocampus CA1
        voxel_size_nm: [5, 5, 5]
        licence: EPFL public research release
        citation: Lucchi et al. 2012; Casser et al. 2018
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from em5m.errors import EMDataError

Modality = Literal[
    "FIB-SEM", "SBF-SEM", "ATUM-SEM", "ssTEM", "ssSEM", "TEM", "SEM", "ET", "cryo-ET", "other"
]
PositiveFloat = Annotated[float, Field(gt=0)]


class Sampling(BaseModel):
    """How tiles are drawn from one dataset (each field falls back to the catalog defaults)."""

    model_config = ConfigDict(extra="forbid")

    tile_size: int | None = Field(None, ge=16, le=4096)
    pixel_sizes_nm: list[PositiveFloat] | None = None
    #: At most this many tiles per dataset and pixel size (random, seeded).
    max_tiles: int | None = Field(None, ge=1)
    #: Upper bound on bytes read from the source per dataset (remote volumes are huge).
    max_bytes: int | None = Field(None, ge=1)
    #: Take every n-th slice along each sliced axis.
    slice_step: int | None = Field(None, ge=1)
    #: Only xy slices even for isotropic volumes.
    xy_only: bool | None = None
    #: Region of interest in level-0 voxels, z0,z1,y0,y1,x0,x1 (half-open).
    roi: list[int] | None = None
    seed: int | None = None

    @field_validator("roi")
    @classmethod
    def _roi_pairs(cls, roi: list[int] | None) -> list[int] | None:
        if roi is not None and (
            len(roi) not in (4, 6) or any(b <= a for a, b in zip(roi[::2], roi[1::2], strict=True))
        ):
            raise ValueError("roi must be [z0,z1,]y0,y1,x0,x1 with each start < stop")
        return roi


class DatasetEntry(BaseModel):
    """One dataset of the catalog."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    uri: str
    modality: Modality
    species: str
    organ: str | None = None
    tissue: str | None = None
    cell_type: str | None = None
    #: Overrides the source's voxel size (nm, z,y,x or y,x) when its metadata is missing or wrong.
    voxel_size_nm: list[PositiveFloat] | None = None
    licence: str = Field(min_length=1)
    citation: str = Field(min_length=1)
    doi: str | None = None
    description: str | None = None
    #: Source-specific options (layer name, HDF5 dataset path, token environment variable, ...).
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    sampling: Sampling = Field(default_factory=Sampling)

    @field_validator("licence", "citation")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("voxel_size_nm")
    @classmethod
    def _voxel_len(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and len(value) not in (2, 3):
            raise ValueError("voxel_size_nm needs 2 (y,x) or 3 (z,y,x) values")
        return value


class CatalogDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tile_size: int = Field(224, ge=16, le=4096)
    pixel_sizes_nm: list[PositiveFloat] = Field(default_factory=lambda: [8.0])
    max_tiles: int = Field(10_000, ge=1)
    max_bytes: int = Field(2 * 1024**3, ge=1)
    slice_step: int = Field(1, ge=1)
    xy_only: bool = False
    seed: int = 0


class Catalog(BaseModel):
    """A validated catalog. Use :func:`load_catalog` to read one from YAML."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    defaults: CatalogDefaults = Field(default_factory=CatalogDefaults)
    datasets: list[DatasetEntry]
    _rejected: list[RejectedEntry] = PrivateAttr(default_factory=list)

    @property
    def rejected(self) -> list[RejectedEntry]:
        """Entries `load_catalog` left out (invalid, no licence, repeated id)."""
        return list(self._rejected)

    @model_validator(mode="after")
    def _unique_ids(self) -> Catalog:
        ids = [d.id for d in self.datasets]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"dataset ids must be unique; repeated: {', '.join(dupes)}")
        return self

    def sampling_for(self, entry: DatasetEntry) -> Sampling:
        """The entry's sampling options with every unset field taken from the defaults."""
        merged = self.defaults.model_dump()
        merged.update({k: v for k, v in entry.sampling.model_dump().items() if v is not None})
        merged.setdefault("roi", None)
        return Sampling(**{k: merged.get(k) for k in Sampling.model_fields})


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(text: str, path: Path) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise EMDataError(
                path, f"catalog uses ${{{name}}} but the environment variable is unset"
            )
        return os.environ[name]

    return _ENV.sub(sub, text)


class InvalidCatalogEntryError(EMDataError):
    """One dataset entry of a catalog is invalid (the other entries are still used)."""


class MissingLicenceError(InvalidCatalogEntryError):
    """A dataset entry has no (or a blank) licence: its tiles could not be redistributed."""


class RejectedEntry(BaseModel):
    """A catalog entry that failed validation, kept so that a run can report it.

    Args:
        index: position of the entry in ``datasets`` (0-based).
        id: its ``id`` when it had a usable one.
        error: class name of the error (`MissingLicenceError`, `InvalidCatalogEntryError`).
        message: what is wrong, naming every invalid field.
    """

    index: int
    id: str | None = None
    error: str
    message: str

    def to_error(self) -> InvalidCatalogEntryError:
        missing = self.error == "MissingLicenceError"
        cls = MissingLicenceError if missing else InvalidCatalogEntryError
        where = f"datasets[{self.index}]" + (f" ({self.id})" if self.id else "")
        return cls(where, self.message)


def _problems(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())


def _reject(
    index: int, raw: object, err: ValidationError | None, message: str | None = None
) -> RejectedEntry:
    ident = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
    licence_bad = err is not None and any(e["loc"][:1] == ("licence",) for e in err.errors())
    return RejectedEntry(
        index=index,
        id=ident,
        error="MissingLicenceError" if licence_bad else "InvalidCatalogEntryError",
        message=message or f"invalid dataset entry: {_problems(err)}",  # type: ignore[arg-type]
    )


def load_catalog(path: str | os.PathLike[str], *, strict: bool = False) -> Catalog:
    """Read and validate a catalog YAML; ``${VAR}`` in it expands from the environment.

    An invalid dataset entry (for example one without a licence) does not sink the catalog: it is
    left out and recorded in `Catalog.rejected` (index, id, named error), so that a curation run
    reports it and goes on with the valid entries. Entries repeating an earlier id are rejected.

    Args:
        path: the YAML file.
        strict: raise on the first rejected entry instead (the old behaviour).

    Raises:
        EMDataError: the file is missing, not YAML, or its top level (version, defaults,
            datasets list) is invalid.
        InvalidCatalogEntryError: with ``strict=True``, for the first rejected entry
            (`MissingLicenceError` when the licence is missing).

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
        >>> _ = p.write_text(
        ...     "datasets:\\n"
        ...     "  - {id: a, uri: /x, modality: TEM, species: mouse, licence: MIT, citation: A}\\n"
        ...     "  - {id: b, uri: /y, modality: TEM, species: mouse, citation: B}\\n"
        ... )
        >>> cat = load_catalog(p)
        >>> [d.id for d in cat.datasets], [(r.id, r.error) for r in cat.rejected]
        (['a'], [('b', 'MissingLicenceError')])
    """
    path = Path(path)
    if not path.is_file():
        raise EMDataError(path, "catalog file does not exist")
    try:
        raw = yaml.safe_load(_expand_env(path.read_text(), path))
    except yaml.YAMLError as err:
        raise EMDataError(path, f"not valid YAML: {err}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), list):
        raise EMDataError(path, "invalid catalog: the top level needs a 'datasets' list")
    try:  # version, defaults and unknown top-level keys: these do sink the file
        top = Catalog.model_validate({**raw, "datasets": []})
    except ValidationError as err:
        raise EMDataError(path, f"invalid catalog: {_problems(err)}") from None
    entries: list[DatasetEntry] = []
    rejected: list[RejectedEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(raw["datasets"]):
        try:
            entry = DatasetEntry.model_validate(item)
        except ValidationError as err:
            rejected.append(_reject(i, item, err))
            continue
        if entry.id in seen:
            rejected.append(_reject(i, item, None, f"dataset id {entry.id!r} is repeated"))
            continue
        seen.add(entry.id)
        entries.append(entry)
    if strict and rejected:
        raise rejected[0].to_error()
    catalog = Catalog(version=top.version, defaults=top.defaults, datasets=entries)
    catalog._rejected = rejected
    return catalog


def validate_entry(raw: dict, *, where: str = "<entry>") -> DatasetEntry:
    """Validate one entry on its own (used to report bad entries without dropping the catalog).

    Raises:
        MissingLicenceError: the licence is missing or blank.
        InvalidCatalogEntryError: any other invalid field.
    """
    try:
        return DatasetEntry.model_validate(raw)
    except ValidationError as err:
        rej = _reject(0, raw, err)
        missing = rej.error == "MissingLicenceError"
        cls = MissingLicenceError if missing else InvalidCatalogEntryError
        raise cls(where, rej.message) from None
