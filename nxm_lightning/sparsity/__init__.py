"""The sparsity core: plain PyTorch, no Lightning, transformers or datasets needed (``tests/test_layers.py`` imports
every module here with those packages blocked).

- :mod:`.nxm`: N:M patterns, masks and projections.
- :mod:`.targets`: which layers to sparsify (``nn.Linear``, and GPT-2's ``Conv1D`` when transformers is installed).
- :mod:`.admm`: the ADMM state (Z, U, rho) and its Z/U step; :mod:`.schedule`: when the phase runs and how rho grows.
- :mod:`.saliency`: what a cut keeps in each group (magnitude, or a diagonal Fisher estimate times W^2).
- :mod:`.srste`: SR-STE, training through the N:M projection of dense weights (a mask that keeps moving).
- :mod:`.finite`: NaN/Inf in many tensors with one device sync (a diverged model is never checkpointed or exported).
- :mod:`.sparse_linear`: the serving backends behind one module, :class:`~.sparse_linear.NxMLinear`, and the routing.
- :mod:`.export_format`: what ``sparsity.json`` and an ONNX file's sparsity record hold and how weights are checked
  against them (the bottom of the core: every writer and reader of an export imports it).
- :mod:`.export` / :mod:`.verify` / :mod:`.onnx_export` (and :mod:`.onnx_format`, what it and ``verify`` share) /
  :mod:`.model_card`: the exported folder and its checks.
- :mod:`.precision`: which dtype a precision flag computes in, and which precision suits this machine.
"""
