"""3D generators (flow-matching priors): Direct3D-S2 and the bundled mini prior, behind one interface."""
