"""Training: data build and curation, synthetic data via a teacher, fine-tuning, eval, retrain."""
