"""The Infinity family: FoundationVision's bitwise text-to-image VAR (Infinity-2B, Infinity-8B)."""
