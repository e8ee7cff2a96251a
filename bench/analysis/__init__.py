"""The analysis plots of the papers: layer-wise error amplification (HGD Figure 5,
:mod:`.amplification`), adversarial vs removed perturbation (HGD Figure 7, :mod:`.residual`) and
accuracy against one swept parameter (:mod:`.sweep`). :mod:`.figures` holds what they share."""
