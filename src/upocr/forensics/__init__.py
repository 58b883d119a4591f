"""Tampered-text forensics: per-word features compared within the image, a small tree ensemble
stored as npz, and the decision (`score_words`, `classify_regions`)."""
