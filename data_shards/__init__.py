"""WebDataset shard writers for the datasets of the paper (DESIGN §3).

`python -m data_shards SOURCE --src PATH --out DIR` or `convert(SOURCE, PATH, DIR)`; the shard
format and `manifest.json` are defined in `cascade_dist.data.manifest`.
"""

from cascade_dist.data.manifest import Manifest, ShardError, verify

from .convert import convert, stratified_holdout
from .sources import SOURCES

__all__ = ["Manifest", "SOURCES", "ShardError", "convert", "stratified_holdout", "verify"]
