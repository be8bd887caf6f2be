"""Identity providers: one module per kind, each filling `base.Provider`."""
