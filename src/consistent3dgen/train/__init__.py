"""Training of the bundled mini prior: procedural shape data, VAE and flow-matching trainers, export.

Inference never imports this package; it writes the prior through :mod:`consistent3dgen.generators.mini`.
"""
