"""Direct3D-S2 (DreamTechAI) in pure PyTorch: state-dict compatible with the official checkpoints."""
