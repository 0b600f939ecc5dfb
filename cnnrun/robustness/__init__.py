"""Robustness: how far a network's decisions hold when its input is pushed.

- attacks.py: FGSM, BIM, PGD and APGD from the network's own input gradient, the
  AutoAttack suite that runs them with the two below, and the batches of adversarial
  training. Every attack takes `(net, x, y, eps)`, images `(N, C, H, W)` in [0, 1] and
  one-hot labels `(N, K)`, and its settings by name.
- fab.py: FAB-T, the smallest perturbation across the decision boundary.
- square.py: Square, a gradient-free random search.
"""
