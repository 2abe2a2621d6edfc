"""emo trainer: small CNNs for FER2013 in PyTorch (needs the ``[train]`` extra)."""
