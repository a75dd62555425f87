"""Model implementations that are not in diffusers (VideoCrafter2's UNet and checkpoint formats)."""
