"""Text generation: batched decoding for sweeps (``batch``) and streamed chat replies
(``chat``)."""
