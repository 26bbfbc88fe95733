"""The study's five stages, one module per notebook: probe, interventions, training, evaluation, analysis."""
