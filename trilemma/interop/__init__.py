"""Other libraries' layouts: models that leave trilemma and come back (`trilemma export`, `trilemma.load`)."""
