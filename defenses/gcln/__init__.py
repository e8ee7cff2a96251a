"""Generative cleaning network with a quantized DCT layer (GCLN): the plugin (:mod:`.gcln`), the
quantized 8x8 block DCT (:mod:`._dct`) and the networks and clean pool (:mod:`._nets`)."""
