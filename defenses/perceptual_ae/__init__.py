"""Perceptual-loss denoising autoencoder: the plugin (:mod:`.perceptual_ae`) and its network,
loss, conversion and training set (:mod:`._perceptual`). The VGG loss network is shared with
GCLN (:mod:`bench.defenses._lossnet`)."""
