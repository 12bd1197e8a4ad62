"""Evaluation science: domain classifier, feature distances, fidelity/CAS, gain, label filter, report."""
