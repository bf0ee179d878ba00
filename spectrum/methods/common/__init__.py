"""Building blocks the methods share: the method contract, affine apply, streamed top-k
thresholds, low-rank cuts and the common part of the Top-K strategies."""
