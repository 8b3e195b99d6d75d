"""The interfaces of the model floor: the one attention interface every kernel implements, model
families (what the profiler, planner and runtime ask of a model), devices, and the helpers every
family shares (sampling, dtypes, user errors, atomic file writes, processes under torchrun)."""
