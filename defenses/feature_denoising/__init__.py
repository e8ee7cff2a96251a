"""Feature-denoising networks (Xie et al., CVPR 2019): the plugin (:mod:`.feature_denoising`),
the denoising blocks (:mod:`._blocks`) and the ResNet they sit in (:mod:`._resnet`)."""
