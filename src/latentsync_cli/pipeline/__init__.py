"""The lip-sync pipeline: windows of frames through face -> VAE -> denoise -> VAE -> restore -> encode."""
