"""Training data: the FER2013 loaders live in the edge runtime (one definition); re-exported here."""
from emo.edge_runtime.dataset import (  # noqa: F401
    DataReport,
    Split,
    class_index,
    has_split,
    load_csv,
    load_folder,
    load_split,
    stratified_split,
)
