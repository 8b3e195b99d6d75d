"""The model floor: VAR and its VQVAE (checkpoint-compatible with the official ones), the one
attention interface every kernel implements, token schedules, sampling, building and loading,
user errors and atomic file writes. It imports nothing else of litevar's."""
