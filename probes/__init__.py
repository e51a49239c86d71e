"""Model-agnostic probes over (examples x features) matrices, following scikit-learn conventions."""
