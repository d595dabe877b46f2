"""meg2fmri: MEG recordings into synthetic fMRI, as a streaming data engine and a conditional GAN.

The stages are subpackages, in the order data flows through them (imports only go downstream):

- ``meg2fmri.shards``: the on-disk contracts (sample format, index, split, commit rule, errors);
- ``meg2fmri.ingest``: ``synth`` (an SMN4Lang-like BIDS dataset) and ``ingest`` (BIDS -> cache + shards);
- ``meg2fmri.loader``: shards -> batches, exactly once, resumable, integrity-checked;
- ``meg2fmri.model``: ``train``, ``evaluate``, ``generate`` (FIF -> BOLD NIfTI);
- ``meg2fmri.bench``: every stage measured against what a user would pick instead.

One command, ``meg2fmri <verb>`` (``meg2fmri.cli``), runs each of them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("meg2fmri")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
