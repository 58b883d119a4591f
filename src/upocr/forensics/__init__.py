"""Tampered-text forensics: per-word features compared within the image, a small tree ensemble and a
crop CNN stored together as npz, and the decision (`score_words`, `classify_regions`)."""
