"""The profile file: JSON metadata plus named tables (docs/profile-schema.md), validated on load
(profiler/schema.py)."""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from litevar.models.core.atomic import read_json, write_text
from litevar.models.core.errors import UserError
from litevar.models.core.family import Arch, ModelFamily, arch_from, family_of
from litevar.profiler.costmodel import CostModel
from litevar.profiler.schema import validate

FORMAT, VERSION = "litevar-profile", 1

def _to_jsonable(df: pd.DataFrame) -> dict:
    rows = [[v.item() if hasattr(v, "item") else v for v in row] for row in df.itertuples(index=False, name=None)]
    return {"columns": [str(c) for c in df.columns], "rows": rows}


@dataclass
class Profile:
    meta: dict = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    # a cost model for another device than the profiled one (profiler.devices.priced); None: the profile's
    priced: object = field(default=None, compare=False, repr=False)

    def table(self, name: str) -> pd.DataFrame:
        if name not in self.tables:
            raise UserError(f"the profile has no {name!r} table (it has {sorted(self.tables)}); "
                            f"re-run `litevar profile` with the stage that makes it")
        return self.tables[name]

    @functools.cached_property
    def arch(self) -> Arch:
        """The profiled architecture (meta.model.arch), typed."""
        return arch_from(self.meta["model"]["arch"])

    @property
    def family(self) -> ModelFamily:
        return family_of(self.arch)

    @functools.cached_property
    def cost_model(self) -> CostModel:
        """The fitted cost model (meta.cost_model), typed; or the one it was priced with for a target."""
        if self.priced is not None:
            return self.priced
        if not self.meta.get("cost_model"):
            raise UserError("the profile has no cost model (meta.cost_model); re-run `litevar profile` with the "
                            "cost stage")
        return CostModel.from_dict(self.meta["cost_model"])

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "meta": self.meta,
                "tables": {k: _to_jsonable(v) for k, v in sorted(self.tables.items())}}

    @classmethod
    def from_dict(cls, d: dict, where: str = "profile", arch: dict | None = None) -> Profile:
        """The profile of a parsed file, validated (profiler.schema; `arch`: the architecture to
        check indices against, default the profile's own meta.model.arch)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise UserError(f"{where} is not a litevar profile (no \"format\": \"{FORMAT}\"); "
                            f"make one with `litevar profile`")
        if d.get("version") != VERSION:
            raise UserError(f"{where} is profile version {d.get('version')}; this litevar reads version {VERSION}: "
                            f"re-run `litevar profile`")
        if not isinstance(d.get("meta", {}), dict) or not isinstance(d.get("tables", {}), dict):
            raise UserError(f"{where}: 'meta' and 'tables' must be objects; re-run `litevar profile`")
        tables = {}
        for name, t in d.get("tables", {}).items():
            try:
                df = pd.DataFrame(t["rows"], columns=t["columns"])
            except (KeyError, TypeError, ValueError, AssertionError) as e:
                raise UserError(f"{where}: table {name!r} is malformed ({e}); re-run `litevar profile`") from None
            tables[name] = df
        prof = cls(meta=dict(d.get("meta", {})), tables=tables)
        validate(prof, where, arch)
        return prof

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=None, separators=(",", ":"), sort_keys=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike, arch: dict | None = None) -> Profile:
        path = Path(path)
        d = read_json(path, "profile", f"pass a profile written by `litevar profile --out {path}`")
        return cls.from_dict(d, where=str(path), arch=arch)
