"""The VAR family (FoundationVision's VAR, class-conditional, next-scale prediction): the model and
its VQVAE, checkpoint-compatible with the official ones, token schedules, building and loading."""
