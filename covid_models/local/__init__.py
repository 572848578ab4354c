"""A hospital's own labelled sample: reading it (`samples`, `scans`), validating a shipped model on it with the
confound check and recalibration (`validation`), and adapting a head to it (`adaptation`)."""
