"""The built-in domains: flight (and its 2-8 feature variants) and hotel."""
