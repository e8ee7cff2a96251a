"""HGD family (Liao et al., CVPR 2018): the plugin (:mod:`.hgd`), its U-net (:mod:`._unet`) and
its adversarial training set (:mod:`._trainset`)."""
